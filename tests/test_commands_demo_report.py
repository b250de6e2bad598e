"""The demo's comparison table: both heads of both arms, the best-head gain, the weighted row,
and the timing line that says when its core was busy."""

from __future__ import annotations

from clipocr.commands.demo_report import SetFigures, Timing, comparison_table, figures_dict


def _figures() -> dict[str, dict[str, SetFigures]]:
    # a baseline whose CTC head reads far better than its decoder: the AR gain flatters
    base = {"clean": SetFigures(100, 20.0, 40.0, 60.0, 40.0),
            "real": SetFigures(300, 10.0, 12.0, 50.0, 12.0)}  # fmt: skip
    dist = {"clean": SetFigures(100, 50.0, 45.0, 80.0, 50.0),
            "real": SetFigures(300, 30.0, 31.0, 70.0, 31.0)}  # fmt: skip
    return {"baseline": base, "distilled": dist}


def _row(table: str, name: str) -> list[str]:
    line = next(x for x in table.splitlines() if x.startswith(name))
    return line.replace("|", " ").split()


def test_table_shows_ar_gain_and_best_head_gain() -> None:
    table = comparison_table(_figures())
    # name, samples, base AR, base CTC, distil AR, distil CTC, gain AR, gain best, NED base/dist
    assert _row(table, "clean") == ["clean", "100", "20.00", "40.00", "50.00", "45.00", "+30.00",
                                    "+10.00", "60.00", "80.00"]  # fmt: skip
    assert _row(table, "real")[6:8] == ["+20.00", "+19.00"]
    # weighted by samples; best = the weighted mean of the per-set bests
    avg = _row(table, "weighted average")
    assert avg[2:4] == ["400", "12.50"] and avg[-4:-2] == ["+22.50", "+16.75"]


def test_table_without_a_ctc_head_uses_the_decoder_alone() -> None:
    base = {"clean": SetFigures(10, 20.0, None, 60.0, 20.0)}
    dist = {"clean": SetFigures(10, 30.0, None, 70.0, 30.0)}
    table = comparison_table({"baseline": base, "distilled": dist})
    row = _row(table, "clean")
    assert row[3] == "—" and row[5] == "—" and row[6:8] == ["+10.00", "+10.00"]
    assert figures_dict({"baseline": base})["baseline"]["clean"]["ctc"] is None


def test_timing_line_says_how_it_was_taken_and_when_the_core_was_busy() -> None:
    quiet = Timing({"baseline": 9.14, "distilled": 9.31}, 1, 50, 5, wall_per_cpu=1.03)
    assert "baseline 9.1, distilled 9.3" in quiet.line() and "1 thread" in quiet.line()
    assert not quiet.busy and "busy" not in quiet.line()
    busy = Timing({"baseline": 57.7, "distilled": 49.9}, 1, 50, 5, wall_per_cpu=6.0)
    assert busy.busy and "busy while timing" in busy.line()
