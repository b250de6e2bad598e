"""Aggregate `clipocr demo --seed S` runs: baseline vs distilled, mean ± spread over seeds.

    .venv/bin/python bench/demo_seeds.py demo_out [--ablations demo_out/ablations]

Reads ``OUT/eval/seed*/{baseline,distilled}.json`` (written by clipocr-eval inside the demo) and
prints word accuracy and 1 − NED per test set as mean ± sample standard deviation over seeds,
with the per-seed gain of distillation. Where the demo also read each student with its CTC head
(``…_ctc.json``), the CTC accuracy and the better head's accuracy (per set, per arm) are shown
too, so a baseline whose decoder lags its encoder does not flatter the gain. Optional ablation
JSONs (clipocr-eval output of runs trained with some guidance switched off) are listed beside
them for the same seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _sets(report: dict) -> dict[str, dict]:
    return {d["name"]: d for d in report["results"]["36"]["datasets"]}


def _weighted(report: dict, key: str) -> float:
    sets = report["results"]["36"]["datasets"]
    return sum(d[key] * d["samples"] for d in sets) / sum(d["samples"] for d in sets)


def _figure(run: dict, kind: str, suffix: str, key: str, name: str) -> float:
    """One arm's figure on one set (or the weighted average); suffix "best" = the better of the
    AR and CTC readings, set by set (the average: the weighted mean of those)."""
    if suffix == "best":
        reps = [run[kind], run[f"{kind}_ctc"]]
        if name != "weighted average":
            return max(_sets(r)[name][key] for r in reps)
        sets = _sets(reps[0])
        n = sum(d["samples"] for d in sets.values())
        return sum(_figure(run, kind, "best", key, s) * d["samples"] for s, d in sets.items()) / n
    rep = run[f"{kind}{suffix}"]
    return _weighted(rep, key) if name == "weighted average" else _sets(rep)[name][key]


def _fmt(values: list[float]) -> str:
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:6.2f} ± {spread:4.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--ablations", type=Path)
    args = parser.parse_args()
    seeds = sorted(args.out.glob("eval/seed*"))
    runs = {
        s.name: {
            f"{k}{suffix}": json.loads((s / f"{k}{suffix}.json").read_text())
            for k in ("baseline", "distilled")
            for suffix in ("", "_ctc")
            if (s / f"{k}{suffix}.json").exists()
        }
        for s in seeds
        if (s / "distilled.json").exists()
    }
    print(f"seeds: {', '.join(runs)}")
    names = list(_sets(next(iter(runs.values()))["baseline"])) + ["weighted average"]
    with_ctc = all("baseline_ctc" in r and "distilled_ctc" in r for r in runs.values())
    tables = [("", "accuracy", "word accuracy % (AR decoder, the protocol)")]
    if with_ctc:
        tables.append(("_ctc", "accuracy", "word accuracy % (CTC head)"))
        tables.append(("best", "accuracy", "word accuracy % (each arm's better head, per set)"))
    tables.append(("", "one_minus_ned", "1 - NED % (AR)"))
    for suffix, key, title in tables:
        print(f"\n{title}")
        print(f"{'test set':<20} {'baseline':>15} {'distilled':>15} {'gain':>15}  per-seed gains")
        for name in names:
            vals = {"baseline": [], "distilled": []}
            for run in runs.values():
                for kind in vals:
                    vals[kind].append(_figure(run, kind, suffix, key, name))
            gains = [d - b for b, d in zip(vals["baseline"], vals["distilled"])]
            print(
                f"{name:<20} {_fmt(vals['baseline']):>15} {_fmt(vals['distilled']):>15} "
                f"{_fmt(gains):>15}  {' '.join(f'{g:+.2f}' for g in gains)}"
            )
    if args.ablations:
        print("\nablations (seed 0, same steps): weighted average")
        rows = {"baseline (no distillation)": runs["seed0"]["baseline"],
                "full (image + text + GAM, LCL)": runs["seed0"]["distilled"]}  # fmt: skip
        for path in sorted(args.ablations.glob("*.json")):
            rows[path.stem] = json.loads(path.read_text())
        for name, rep in rows.items():
            print(
                f"{name:<32} accuracy {_weighted(rep, 'accuracy'):6.2f}  "
                f"1-NED {_weighted(rep, 'one_minus_ned'):6.2f}"
            )


if __name__ == "__main__":
    main()
