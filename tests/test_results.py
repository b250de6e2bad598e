"""Figures derived from a `Report`'s samples: per-dataset rows and sample-weighted Combined rows."""

from pathlib import Path

import pytest

from clipocr.evaluate import Report
from clipocr.evaluate.datasets import GROUP_COMMON, Dataset
from clipocr.evaluate.results import Sample


def _report(results: dict[str, tuple[int, int]]) -> Report:
    """A report with `correct` of `n` samples right per dataset (label "ab", conf 0.5)."""
    datasets, samples = [], []
    for name, (n, correct) in results.items():
        datasets.append(Dataset(name, Path(name), GROUP_COMMON))
        samples += [
            Sample(name, i + 1, "ab", "ab" if i < correct else "a", 0.5) for i in range(n)
        ]  # fmt: skip
    return Report(datasets, samples)


def test_weighted_averages_are_sample_weighted() -> None:
    report = _report(
        {"IIIT5k": (10, 9), "SVT": (4, 2), "IC13_857": (5, 5), "IC13_1015": (6, 5),
         "IC15_1811": (3, 0), "IC15_2077": (7, 1), "SVTP": (2, 1), "CUTE80": (1, 1)}
    )  # fmt: skip
    rows = {r.name: r for r in report.rows}
    sub, full = report.combined("sub"), report.combined("full")
    assert sub.members == ("IIIT5k", "SVT", "IC13_857", "IC15_1811", "SVTP", "CUTE80")
    assert sub.complete and full.complete
    assert sub.samples == 10 + 4 + 5 + 3 + 2 + 1
    assert sub.accuracy == pytest.approx(100 * (9 + 2 + 5 + 0 + 1 + 1) / 25)
    # The same as the per-dataset accuracies weighted by their sample counts.
    weighted = sum(rows[m].accuracy * rows[m].samples for m in sub.members) / sub.samples
    assert sub.accuracy == pytest.approx(weighted)
    assert full.accuracy == pytest.approx(100 * (9 + 2 + 5 + 1 + 1 + 1) / 30)
    assert sub.one_minus_ned == pytest.approx(100 * (1 - 0.5 * (25 - 18) / 25))
    assert sub.confidence == pytest.approx(50.0)
    assert report.overall().samples == 38


def test_combined_with_missing_members_is_marked_incomplete() -> None:
    report = _report({"IIIT5k": (4, 1), "mywords": (3, 3)})
    sub = report.combined("sub")
    assert sub.members == ("IIIT5k",) and sub.accuracy == 25.0
    assert not sub.complete and sub.missing == ("SVT", "IC13_857", "IC15_1811", "SVTP", "CUTE80")
    assert _report({"mywords": (1, 1)}).combined("full") is None
