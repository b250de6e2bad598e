#!/bin/bash
# Transfer probe for the word renderer (issue 20): render the demo's training mix (9,000 clean +
# 4,000 hard words, the demo's seeds) with one renderer, train the plain baseline on it alone
# (demo preset, the demo's steps, batch and lr, one thread, no augmentation), and score it with
# clipocr-eval on the demo's real crops (500 IIIT5k + 500 IC15 training crops drawn as
# `clipocr demo --real-data` draws them, never used by the renderer's colour table).
#
#   bench/synth_transfer.sh TAG RENDER_TREE [STEPS] [TRAIN_TREE]
#
# RENDER_TREE: a folder holding the `clipocr` package whose renderer to probe (the repository
# root for the current one; `git archive REV clipocr | tar -x -C DIR` for an old one).
# TRAIN_TREE (default: RENDER_TREE): the `clipocr` used to prepare, train and evaluate; pin it to
# one tree for every arm so only the renderer differs. Outputs go to $PROBE_ROOT/probe_TAG
# (default ~/runs/synth_probe); the score is in eval.txt. Old vs new at the same budget:
#
#   git archive c44d6a1 clipocr | tar -x -C /tmp/old && \
#   bench/synth_transfer.sh old /tmp/old 2300 /tmp/old & bench/synth_transfer.sh new . 2300 /tmp/old
set -e
TAG=$1; RENDER_TREE=$(realpath "$2"); STEPS=${3:-2300}; TRAIN_TREE=$(realpath "${4:-$2}")
ROOT=${PROBE_ROOT:-$HOME/runs/synth_probe}; OUT=$ROOT/probe_$TAG; mkdir -p "$OUT"
REPO=$(cd "$(dirname "$0")/.." && pwd); PY=$REPO/.venv/bin/python
REAL=${REAL_DATA:-$REPO/../shared/data/real-train}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd /tmp
render() { PYTHONPATH=$RENDER_TREE nice -n 5 "$PY" -m clipocr "$@"; }
run() { PYTHONPATH=$TRAIN_TREE nice -n 5 "$PY" -m clipocr "$@"; }
[ -d "$ROOT/real/test" ] || PYTHONPATH=$TRAIN_TREE "$PY" -c "
from pathlib import Path
from clipocr.commands.demo import _real_lmdbs
_real_lmdbs(Path('$REAL'), Path('$ROOT/real'), 500, 0)"
[ -d "$OUT/train" ] || render synth --out "$OUT/train" --num 9000 --seed 1 --style clean
[ -d "$OUT/train_hard" ] || render synth --out "$OUT/train_hard" --num 4000 --seed 11 --style hard
[ -d "$OUT/val" ] || render synth --out "$OUT/val" --num 250 --seed 2 --style clean
[ -f "$OUT/shards/shards.json" ] || run prepare --out "$OUT/shards" --lmdb "$OUT/train" \
  --lmdb "$OUT/train_hard" --shard-size 2000
[ -f "$OUT/run/student.safetensors" ] || run train --no-distill --preset demo \
  --shards "$OUT/shards" --out "$OUT/run" --batch-size 32 --lr 2e-2 --max-steps "$STEPS" \
  --threads 1 --workers 0 --seed 0 --val "$OUT/val" --val-every $((STEPS / 5)) \
  --ckpt-every "$STEPS" --no-augment > "$OUT/train.log" 2>&1
PYTHONPATH=$TRAIN_TREE nice -n 5 "$PY" -c "from clipocr.commands.eval import main; main()" \
  "$OUT/run/student.safetensors" --data "$ROOT/real/test" --batch-size 64 --device cpu \
  > "$OUT/eval.txt" 2>&1
cat "$OUT/eval.txt"
