"""CPU training rate per thread setting: torch intra-op threads × DataLoader workers (issue 13).

    .venv/bin/python bench/bench_threads.py --shards demo_out/data/shards --steps 150

Runs `clipocr train --no-distill` (the demo's preset and batch) once per setting, one after the
other on the same shards, and reads the rate the trainer logs (samples/s over the epoch so far,
`history.jsonl`) after its warm-up. "torch default" leaves torch's own thread count (one per
core), which is what a job that sets nothing gets; "auto" is clipocr's choice
(`clipocr.pipeline.threads.cpu_threads`: the usable cores minus one per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = [  # (label, --threads value or None for auto, workers, leave torch's default)
    ("torch default, 1 worker", None, 1, True),
    ("auto (1 thread), 1 worker", None, 1, False),
    ("1 thread, 0 workers", 1, 0, False),
    ("auto (2 threads), 0 workers", None, 0, False),
]


def rate(shards: Path, out: Path, steps: int, threads: int | None, workers: int,
         torch_default: bool, preset: str) -> float:  # fmt: skip
    args = [sys.executable, "-m", "clipocr", "train", "--shards", str(shards), "--no-distill",
            "--out", str(out), "--preset", preset, "--batch-size", "32", "--max-steps", str(steps),
            "--workers", str(workers), "--no-augment"]  # fmt: skip
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        args += ["--threads", str(threads)]
    if torch_default:  # what a job that sets nothing gets: torch's own count
        env["OMP_NUM_THREADS"] = str(os.cpu_count())
    subprocess.run(args, env=env, check=True, capture_output=True)
    records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    return rates[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--preset", default="demo")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, threads, workers, default) in enumerate(SETTINGS):
            value = rate(args.shards, Path(tmp) / str(i), args.steps, threads, workers, default,
                         args.preset)  # fmt: skip
            print(f"{label:<30} {value:8.1f} samples/s")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
