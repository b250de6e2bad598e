"""Every pending GPU figure of BENCHMARKS in one command, written as JSON to one folder.

    python3 bench/gpu_check.py --prepare          # here, first: render the seed words
    bash bench/gpu_check.sh [OUT_DIR]             # on the lent GPU machine (≤ 8 min)
    bash bench/gpu_check.sh OUT_DIR --quick       # anywhere, on the CPU, tiny sizes (≈ 1 min)

A lent GPU machine starts bare and reaches no registry: `gpu_check.sh` installs the wheels that
``/work/shared/tools/device_wheels.py`` collected into ``.whl/`` (only if clipocr's imports are
missing) and runs this driver with the repository on PYTHONPATH. That machine also lacks
wordfreq, so it cannot render words: ``--prepare`` renders `SEED_WORDS` words here into
``bench/out/gpu_seed`` (≈ 7 MB, carried with the run), and the data step repeats them to the
sizes needed (2,000 distinct words and images: decoding and storing cost the same per sample,
and labels repeat as in MJSynth, ≈ 16× here, ≈ 100× there).

Steps, each its bench script in its own process group with its own time limit, so that one
failure or overrun leaves the other figures (sizes: `PROFILES`):

* ``cache`` — `bench_cache.py`, ViT-B/16 (random init) bf16 batch 256, 8 decode workers:
  forward-only vs end-to-end vs each stage alone → ``cache.json``;
* ``cache_null`` — `bench_cache.py --teacher null`, ViT-B/16 shapes, 1 and 8 runner processes:
  the pipeline's capacity without a teacher → ``cache_null.json``;
* ``train`` — `bench_train.py --preset small` (bf16 autocast): plain vs cached vs online step,
  loader supply → ``train.json`` (parsed from its report);
* ``inference`` — `bench_inference.py --preset small`: ms/image at batch 1, images/s at batch
  256 → ``inference.json`` (parsed from its report).

``gpu_check.json`` sums up (per step: exit status, seconds, time-out; the GPU as nvidia-smi
names it) and ``gpu_check.log`` holds every step's full output: 6 files, within what a device
run brings back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEFAULT_SEED = BENCH / "out" / "gpu_seed"
SEED_WORDS = 2000
BUDGET_S = 470  # the whole GPU run, under the 8 minutes it is sized for

# Per profile: data size, then each step's bench arguments and time limit (seconds).
PROFILES: dict[str, dict] = {
    "gpu": {
        "data": {"num": 32768, "shard_size": 4096},
        "cache": (["--device", "cuda", "--teacher", "vit-b-16", "--precision", "bf16",
                   "--batch-size", "256", "--workers", "8", "--writer-num", "8192"], 150),
        "cache_null": (["--device", "cuda", "--teacher", "null", "--null-shapes", "vit-b-16",
                        "--precision", "bf16", "--batch-size", "256", "--workers", "1",
                        "--processes", "1,8"], 110),
        "train": (["--device", "cuda", "--preset", "small", "--num", "8192", "--shard-size",
                   "2048", "--loader-workers", "8"], 150),
        "inference": (["--device", "cuda", "--preset", "small", "--batch-size", "256"], 50),
    },
    "quick": {
        "data": {"num": 128, "shard_size": 32},
        "cache": (["--teacher", "demo", "--batch-size", "16", "--workers", "0", "--threads", "1",
                   "--writer-num", "32", "--reps", "2"], 60),
        "cache_null": (["--teacher", "null", "--null-shapes", "demo", "--batch-size", "16",
                        "--workers", "0", "--threads", "1", "--processes", "1,2"], 60),
        "train": (["--preset", "test", "--batch-size", "8", "--num", "64", "--shard-size", "32",
                   "--rounds", "2", "--warmup", "0", "--loader-workers", "0", "--threads", "1"],
                  60),
        "inference": (["--preset", "test", "--batch-size", "8", "--threads", "1", "--warmup",
                       "1", "--repeats-b1", "2", "--repeats-batch", "1"], 60),
    },
}  # fmt: skip
STEPS = ("cache", "cache_null", "train", "inference")


# ------------------------------------------------------------------------------------------------
# data: seed words repeated into shards


def prepare_seed(seed: Path, num: int = SEED_WORDS) -> None:
    """Render the seed words (needs wordfreq and the font packages: run it here, not there)."""
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.synth import render_lmdb

    render_lmdb(seed, num=num, seed=0, charset=Charset.from_name("36"))
    print(f"{num} seed words in {seed}: name that folder (and .whl) in the run's carry")


def seeded_shards(seed: Path, root: Path, num: int, shard_size: int, charset, **_) -> Path:
    """`_common.make_shards`' result without rendering: the seed LMDB's samples repeated to
    `num`, then prepared into tar shards under `root/shards` by the real `prepare_shards`."""
    from clipocr.pipeline.lmdb_io import LmdbReader, LmdbWriter
    from clipocr.pipeline.shards import prepare_shards

    reader = LmdbReader(seed)
    try:
        samples = [(data, label) for _, data, label in reader.iter_raw()]
    finally:
        reader.close()
    with LmdbWriter(root / "seeded") as writer:
        for i in range(num):
            writer.add(*samples[i % len(samples)])
    prepare_shards([root / "seeded"], root / "shards", charset, shard_size, progress=False)
    return root / "shards"


def run_with_seed(seed: Path, script: Path, argv: list[str]) -> None:
    """Run a bench script whose data comes from `_common.make_shards` on the seed instead."""
    sys.path.insert(0, str(script.parent))
    import _common

    _common.make_shards = lambda root, num, shard_size, charset, **kw: seeded_shards(
        seed, root, num, shard_size, charset
    )
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")


# ------------------------------------------------------------------------------------------------
# reports → JSON

NUM = r"([-+\d.,]+)"


def _f(text: str) -> float:
    return float(text.replace(",", ""))


def parse_train(text: str) -> dict:
    """`bench_train.py`'s report: step medians per variant, ratios, loader supply."""
    steps = {}
    for m in re.finditer(
        rf"^\s+(plain|cached|online)\s+{NUM} ms/step median \(min {NUM}, max {NUM}, n=(\d+)\),"
        rf"\s+{NUM} samples/s",
        text,
        re.M,
    ):
        steps[m[1]] = {"ms": _f(m[2]), "min_ms": _f(m[3]), "max_ms": _f(m[4]), "n": int(m[5]),
                       "samples_per_s": _f(m[6])}  # fmt: skip
    loader = [
        {"workers": int(m[1]), "store": m[2] == "with store", "samples_per_s": _f(m[3]),
         "per_worker": _f(m[4])}
        for m in re.finditer(rf"W=(\d+) (with store|no store)\s+{NUM} samples/s =\s+{NUM} per",
                             text)
    ]  # fmt: skip
    demand = re.search(rf"training demand \(cached\) {NUM} samples/s", text)
    out = {
        "setup": _line(text, "setup"),
        "machine": _line(text, "machine"),
        "steps": steps,
        "loader": loader,
        "demand_samples_per_s": _f(demand[1]) if demand else None,
    }
    if {"plain", "cached", "online"} <= set(steps):
        out["cached_over_plain"] = steps["cached"]["ms"] / steps["plain"]["ms"]
        out["online_over_plain"] = steps["online"]["ms"] / steps["plain"]["ms"]
    return out


def parse_inference(text: str) -> dict:
    """`bench_inference.py`'s report: ms/image at batch 1 and images/s at the large batch."""
    rows = {}
    for key, pattern in (
        ("1_step", r"1 step \(EOS at once\)"),
        ("max_steps", r"\d+ steps \(EOS never\)"),
        ("typical_word", r"\d+ steps \(interpolated\)"),
    ):
        m = re.search(rf"^{pattern}\s+{NUM}\s+{NUM}\s*$", text, re.M)
        if m:
            rows[key] = {"ms_per_image_b1": _f(m[1]), "images_per_s_batch": _f(m[2])}
    batch = re.search(r"images/s \(batch (\d+)\)", text)
    return {
        "model": _line(text, "student"),
        "batch_size": int(batch[1]) if batch else None,
        "precision": "fp32",
        "decoding": rows,
    }


def _line(text: str, prefix: str) -> str | None:
    m = re.search(rf"^{prefix}\s+(.*)$", text, re.M)
    return m[1].strip() if m else None


# ------------------------------------------------------------------------------------------------
# the run


def run_step(cmd: list[str], log: Path, limit: float, env: dict) -> tuple[int | None, float, str]:
    """Run `cmd` in its own process group for at most `limit` s; (exit status or None on
    time-out, seconds, its output). The whole group is killed at the limit (decode workers,
    runner processes), so nothing outlives its step."""
    with tempfile.TemporaryFile("w+") as out:
        tic = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)  # fmt: skip
        try:
            rc: int | None = proc.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        seconds = time.monotonic() - tic
        out.seek(0)
        text = out.read()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{text}\n[rc {rc}, {seconds:.1f} s]\n\n")
    print(text, end="", flush=True)
    return rc, seconds, text


def nvidia_smi() -> str | None:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--with-seed":  # internal: one seeded bench script
        run_with_seed(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "out",
        nargs="?",
        type=Path,
        default=None,
        help="folder for the JSON files (default $OUT, else bench/out/gpu_check)",
    )
    parser.add_argument("--quick", action="store_true", help="CPU, tiny sizes (the test's run)")
    parser.add_argument("--seed", type=Path, default=DEFAULT_SEED, help="seed words (LMDB)")
    parser.add_argument("--prepare", action="store_true", help="render the seed words and stop")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma list of steps to run")
    args = parser.parse_args()  # fmt: skip
    if args.prepare:
        prepare_seed(args.seed)
        return
    if not (args.seed / "data.mdb").is_file():
        raise SystemExit(f"{args.seed}: no seed words; run `python3 bench/gpu_check.py "
                         "--prepare` where wordfreq is installed and carry the folder")  # fmt: skip
    out = args.out or Path(os.environ.get("OUT") or BENCH / "out" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    profile = PROFILES["quick" if args.quick else "gpu"]
    log = out / "gpu_check.log"
    log.write_text("")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    summary: dict = {"profile": "quick" if args.quick else "gpu", "gpu": nvidia_smi(), "steps": {}}
    deadline = time.monotonic() + BUDGET_S
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        from clipocr.pipeline.charset import Charset

        tic = time.monotonic()
        shards = seeded_shards(args.seed, Path(tmp), charset=Charset.from_name("36"),
                               **profile["data"])  # fmt: skip
        summary["data_seconds"] = time.monotonic() - tic
        for step in args.steps.split(","):
            extra, limit = profile[step]
            limit = min(limit, deadline - time.monotonic())
            if limit < 10:
                summary["steps"][step] = {"rc": None, "skipped": "out of time"}
                continue
            if step.startswith("cache"):
                cmd = [py, str(BENCH / "bench_cache.py"), "--shards", str(shards),
                       "--json", str(out / f"{step}.json"), *extra]  # fmt: skip
            elif step == "train":  # renders its own data: the seed stands in for that
                cmd = [py, str(BENCH / "gpu_check.py"), "--with-seed", str(args.seed),
                       str(BENCH / "bench_train.py"), *extra]  # fmt: skip
            else:
                cmd = [py, str(BENCH / "bench_inference.py"), *extra]
            print(f"== {step}: {' '.join(cmd[1:])}", flush=True)
            rc, seconds, text = run_step(cmd, log, limit, env)
            summary["steps"][step] = {"rc": rc, "seconds": round(seconds, 1),
                                      "timed_out": rc is None}  # fmt: skip
            parse = {"train": parse_train, "inference": parse_inference}.get(step)
            if parse is not None and rc == 0:
                (out / f"{step}.json").write_text(json.dumps(parse(text), indent=2) + "\n")
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = [s for s, r in summary["steps"].items() if r["rc"] != 0]
    print(f"== gpu_check: {len(summary['steps']) - len(failed)} of {len(summary['steps'])} steps "
          f"ok{'; failed: ' + ', '.join(failed) if failed else ''}; JSON in {out}")  # fmt: skip
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
