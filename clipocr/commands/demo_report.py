"""What the demo reports: both students read by both of their heads, timed on purpose, one table.

Both heads, because a gain read off the autoregressive decoder alone can flatter distillation:
a plain student's decoder lags its encoder (issue 13), and its CTC head on the encoder tokens
may read far better than its decoder. So every test set shows the AR reading (the protocol) and
the CTC reading of each arm, and the gain of the *better* head of each arm beside the AR gain.

Timing is its own step, not a by-product of scoring: `clipocr-eval`'s speed line takes torch's
thread count as it finds it, which on a shared or oversubscribed machine turns batch-1 latency
into a measure of the scheduler (57.7 ms/image where one quiet thread takes ≈ 9). Here every
student is timed on one intra-op thread, alone (the arms take turns, round by round, so a load
change hits both alike), and the median round is reported with how it was taken.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipocr.evaluate.results import Report

ARMS = ("baseline", "distilled")


@dataclass(frozen=True)
class SetFigures:
    """One arm on one test set: word accuracy % by each head, and 1 − NED % of the AR reading."""

    samples: int
    ar: float
    ctc: float | None  # None: the student has no CTC head
    ned: float
    best: float  # the better of `ar` and `ctc` (an average row: the mean of its sets' bests)


@dataclass(frozen=True)
class Timing:
    """ms/image at batch 1 per arm: the median of `rounds` rounds of `images` single images, and
    how busy the core was meanwhile (wall ÷ this thread's CPU time; ≈ 1 on a free core)."""

    ms_per_image: dict[str, float]
    threads: int
    images: int
    rounds: int
    wall_per_cpu: float

    @property
    def busy(self) -> bool:
        return self.wall_per_cpu > BUSY

    def line(self) -> str:
        arms = ", ".join(f"{arm} {ms:.1f}" for arm, ms in self.ms_per_image.items())
        line = (
            f"ms/image at batch 1: {arms} (CPU, {self.threads} thread, arms timed in turn; "
            f"median of {self.rounds} rounds × {self.images} images; wall/CPU "
            f"{self.wall_per_cpu:.2f})"
        )
        if self.busy:
            line += (
                "\nthe core was busy while timing (wall time well above the thread's CPU time),\n"
                "so these are inflated: `clipocr-eval --threads 1` on a quiet machine times the "
                "student alone"
            )
        return line


BUSY = 1.2  # wall ÷ CPU time above which the timing shared its core with other work


def set_figures(ar: Report, ctc: Report | None) -> dict[str, SetFigures]:
    """Per test set, from one arm's AR report and (if it has a CTC head) its CTC report."""
    ctc_rows = {r.name: r for r in ctc.rows} if ctc is not None else {}
    out = {}
    for r in ar.rows:
        read = round(r.accuracy, 2)
        by_ctc = round(ctc_rows[r.name].accuracy, 2) if r.name in ctc_rows else None
        best = read if by_ctc is None else max(read, by_ctc)
        out[r.name] = SetFigures(r.samples, read, by_ctc, round(r.one_minus_ned, 2), best)
    return out


def figures_dict(figures: dict[str, dict[str, SetFigures]]) -> dict:
    """JSON form (`summary-seedN.json`), what the demo's pin test compares."""
    return {arm: {name: asdict(f) for name, f in sets.items()} for arm, sets in figures.items()}


def comparison_table(figures: dict[str, dict[str, SetFigures]]) -> str:
    """Per test set: AR and CTC word accuracy of both arms, the AR gain, the best-head gain, and
    1 − NED (AR) of both; then the sample-weighted average."""
    base, dist = figures["baseline"], figures["distilled"]
    header = (
        f"{'':<28} | {'baseline':^15} | {'distilled':^15} | {'gain':^15} | {'1 - NED % (AR)':^15}\n"
        f"{'test set':<20}{'samples':>8} | {'AR':>7}{'CTC':>8} | {'AR':>7}{'CTC':>8} | "
        f"{'AR':>7}{'best':>8} | {'base':>7}{'distil':>8}"
    )
    rule = "-" * len(header.splitlines()[1])

    def pct(v: float | None) -> str:
        return f"{'—' if v is None else f'{v:.2f}':>7}"

    def line(name: str, count: int, b: SetFigures, d: SetFigures) -> str:
        return (
            f"{name:<20}{count:>8} | {pct(b.ar)} {pct(b.ctc)} | {pct(d.ar)} {pct(d.ctc)} | "
            f"{d.ar - b.ar:>+7.2f} {d.best - b.best:>+7.2f} | {pct(b.ned)} {pct(d.ned)}"
        )

    rows = [header, rule]
    for name, b in base.items():
        rows.append(line(name, b.samples, b, dist[name]))
    rows.append(rule)
    n = sum(b.samples for b in base.values())
    avg = {arm: _weighted(figures[arm], n) for arm in ARMS}
    rows.append(line("weighted average", n, avg["baseline"], avg["distilled"]))
    rows.append(
        "AR = the autoregressive decoder (the protocol); CTC = the auxiliary head on the encoder\n"
        "tokens; best = the gain between each arm's better head, set by set."
    )
    return "\n".join(rows)


def _weighted(sets: dict[str, SetFigures], n: int) -> SetFigures:
    def mean(key: str) -> float | None:
        values = [getattr(f, key) for f in sets.values()]
        if any(v is None for v in values):
            return None
        return sum(v * f.samples for v, f in zip(values, sets.values(), strict=True)) / n

    return SetFigures(n, mean("ar"), mean("ctc"), mean("ned"), mean("best"))


def time_students(
    models: dict[str, Path], test_root: Path, images: int = 50, rounds: int = 5
) -> Timing:
    """ms/image at batch 1 of each student on one CPU thread, the students taking turns.

    Each round times every student over the same `images` test images (greedy decoding
    included, after warm-up, by `clipocr-eval`'s own `measure_speed`); the median round per
    student is kept. The thread's CPU time is taken alongside: wall ÷ CPU ≈ 1 says the core was
    the timing's own. Torch's thread count is restored afterwards.
    """
    import torch

    from clipocr.evaluate.benchmark import first_images, measure_speed
    from clipocr.evaluate.datasets import discover_lmdbs
    from clipocr.train_student.checkpoint import load_student

    loaded = {arm: load_student(path, map_location="cpu") for arm, path in models.items()}
    batch = first_images(discover_lmdbs(test_root), images)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    per_round: dict[str, list[float]] = {arm: [] for arm in loaded}
    wall = cpu = 0.0
    try:
        for _ in range(rounds):
            for arm, model in loaded.items():
                tic, cpu_tic = time.perf_counter(), time.thread_time()
                speed = measure_speed(
                    model, batch, len(batch), repeats_b1=len(batch), repeats_batch=1
                )
                wall += time.perf_counter() - tic
                cpu += time.thread_time() - cpu_tic
                per_round[arm].append(speed.ms_per_image)
    finally:
        torch.set_num_threads(before)
    medians = {arm: statistics.median(ms) for arm, ms in per_round.items()}
    return Timing(medians, 1, len(batch), rounds, wall / max(cpu, 1e-9))
