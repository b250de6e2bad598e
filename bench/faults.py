"""Fault injection: the slow cases of the fault suite (issue 15), run as a user would meet them.

Every case runs the real `clipocr` commands as subprocesses on a small dataset rendered here
(`clipocr synth`), then checks one of two outcomes:

* a **fault** (kill -9, a killed or stalled process, two runs at once, a full disk) must be
  *survived with nothing lost*: the rerun / resume completes, `cache-teacher --verify --shards`
  passes, and results equal an uninterrupted run's (bit for bit for training);
* a **bad input** must be *handled*: exit code 1 or 2 with a one-line ``error: …`` (or, for
  `--verify`, a ``FAILED`` report naming the problem) and no traceback — or, where the design
  says so, a counted skip.

Prints a table and the totals; ``--json OUT`` writes them. The disk-full cases need a small
tmpfs (``mount -t tmpfs``, root only); without it they are skipped with a note. Everything runs
on one core with one thread per process (``taskset -c 0 python bench/faults.py``); every
process is bounded by a timeout and killed in the end. A ``--work`` folder is kept and reused by
the next run with the same folder (its data is built once), which is handy with ``--only``.

The cases live in `fault_cases.py` / `fault_cases_train.py` (faults) and `bad_inputs.py` /
`bad_inputs_run.py` (bad inputs), issue 23's in `fault_cases_23.py` / `bad_inputs_23.py`;
`fault_kit.py` holds what they share (processes, checks, the workspace).

    python bench/faults.py [--json faults.json] [--work DIR] [--only SUBSTRING] [--kind KIND]
                           [--issue23]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bad_inputs import BAD_DATA
from bad_inputs_23 import BAD_23
from bad_inputs_run import BAD_RUN
from fault_cases import FAULTS
from fault_cases_23 import FAULTS_23
from fault_cases_train import TRAIN_FAULTS
from fault_kit import Result, Work, kill_all


def run_case(w: Work, name: str, kind: str, fn: Callable) -> Result:
    tic = time.perf_counter()
    try:
        ok, note = fn(w)
    except Exception as err:  # a broken case is reported as failed, the suite goes on
        ok, note = False, f"case error: {type(err).__name__}: {err}"
    result = Result(name, kind, ok, note, round(time.perf_counter() - tic, 1))
    mark = {True: "ok  ", False: "FAIL", None: "skip"}[ok]
    print(f"{mark}  {kind:9s}  {name:48s} {result.seconds:6.1f}s  {note}", flush=True)
    return result


def totals(results: list[Result]) -> dict:
    def count(kind):
        tried = [r for r in results if r.kind == kind and r.ok is not None]
        return len(tried), sum(bool(r.ok) for r in tried)

    (fi, fs), (bi, bh) = count("fault"), count("bad input")
    skipped = [r.name for r in results if r.ok is None]
    return {"faults_injected": fi, "faults_survived": fs, "bad_inputs_tried": bi,
            "bad_inputs_handled": bh, "skipped": skipped}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results and totals here")
    parser.add_argument("--work", type=Path, help="work folder (kept); default: a temporary one")
    parser.add_argument(
        "--only", default="", help="run only cases whose name contains this (or any of A|B|…)"
    )
    parser.add_argument("--kind", choices=("fault", "bad input"), help="run only cases of a kind")
    parser.add_argument("--issue23", action="store_true", help="run only issue 23's cases")
    args = parser.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="clipocr-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    w = Work(root)
    results: list[Result] = []
    tic = time.perf_counter()
    try:
        w.build()
        print(f"setup {time.perf_counter() - tic:.0f} s in {root}; tmpfs: {w.tmpfs}", flush=True)
        faults, bad = FAULTS + TRAIN_FAULTS + FAULTS_23, BAD_DATA + BAD_RUN + BAD_23
        if args.issue23:
            faults, bad = FAULTS_23, BAD_23
        cases = [(n, "fault", f) for n, f in faults] + [(n, "bad input", f) for n, f in bad]
        only = args.only.split("|")
        for name, kind, fn in cases:
            if any(part in name for part in only) and args.kind in (None, kind):
                results.append(run_case(w, name, kind, fn))
    finally:
        kill_all()
        w.unmount()
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    summary = totals(results)
    summary["seconds"] = round(time.perf_counter() - tic)
    print(f"\nfaults injected {summary['faults_injected']}, survived with nothing lost "
          f"{summary['faults_survived']}; bad inputs tried {summary['bad_inputs_tried']}, handled "
          f"{summary['bad_inputs_handled']}; skipped {len(summary['skipped'])}; "
          f"{summary['seconds']} s")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"totals": summary, "cases": [asdict(r) for r in results]}, indent=2)
        )


if __name__ == "__main__":
    main()
