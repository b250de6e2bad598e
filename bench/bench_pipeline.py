"""Throughput of the data pipeline on rendered words: `prepare` and the shard reader.

    .venv/bin/python bench/bench_pipeline.py --num 20000

Reports prepare samples/s and MB/s (LMDB → tar shards, no re-encode) and the shard reader's
samples/s in one process (tar read + decode + 32×128 resize → uint8 tensor). Goal for the
reader: ≥ 2,000 samples/s per process (a GPU trainer consumes several thousand per second
across its workers).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.shards import ShardReader, prepare_shards
from clipocr.pipeline.synth import render_lmdb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num", type=int, default=20000)
    parser.add_argument("--shard-size", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cs = Charset.from_name("36")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "synth"
        render_lmdb(db, num=args.num, seed=0, charset=cs, progress=False)
        mb = sum(f.stat().st_size for f in db.iterdir()) / 1e6

        tic = time.perf_counter()
        index = prepare_shards([db], Path(tmp) / "shards", cs, args.shard_size, progress=False)
        prep_s = time.perf_counter() - tic
        tar_mb = sum(f.stat().st_size for f in (Path(tmp) / "shards").glob("*.tar")) / 1e6

        reader = ShardReader(Path(tmp) / "shards")
        tic = time.perf_counter()
        n = sum(1 for _ in reader)
        read_s = time.perf_counter() - tic
    print(f"samples            {index.num_samples}")
    print(f"LMDB size          {mb:.1f} MB, shards {tar_mb:.1f} MB")
    rate = index.num_samples / prep_s
    print(f"prepare            {rate:,.0f} samples/s, {tar_mb / prep_s:.1f} MB/s")
    print(f"shard reader       {n / read_s:,.0f} samples/s (1 process, decode + resize)")


if __name__ == "__main__":
    main()
