"""`clipocr demo` end to end at a tiny scale, with the bundled teacher."""

import json
from pathlib import Path

from typer.testing import CliRunner

from clipocr.commands.app import app


def test_demo_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--scale", "0.02"])
    assert result.exit_code == 0, result.output[-3000:]
    assert "distillation gain" in result.output
    assert "bundled demo teacher" in result.output
    for name in ("synth_clean", "synth_hard"):
        assert f"\n{name}" in result.output  # a row of the comparison table
    assert "weighted average" in result.output
    runs = out / "runs" / "seed0"
    for run in ("baseline", "distilled"):
        assert (runs / run / "student.safetensors").is_file()
        assert (runs / run / "curves.png").stat().st_size > 1000
        assert (out / "eval" / "seed0" / f"{run}.json").is_file()  # written by clipocr-eval
    assert (out / "eval" / "seed0" / "distilled_grid.png").stat().st_size > 1000
    assert (out / "teacher_store" / "manifest.json").is_file()
    assert (out / "summary-seed0.json").is_file()
    # A rerun resumes: every stage is found finished.
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--scale", "0.02"])
    assert again.exit_code == 0 and again.output.count("already trained, kept") == 2


def test_demo_trains_both_students_side_by_side(tmp_path: Path, monkeypatch) -> None:
    """With two cores each run is its own `clipocr train` process (logged to RUN/train.log)."""
    monkeypatch.setattr("clipocr.commands.demo.usable_cores", lambda: 2)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--scale", "0.02", "--parallel"])
    assert result.exit_code == 0, result.output[-3000:]
    assert "side by side on one core each" in result.output
    runs = out / "runs" / "seed0"
    for run in ("baseline", "distilled"):
        assert (runs / run / "student.safetensors").is_file()
        assert "student exported" in (runs / run / "train.log").read_text()
        config = json.loads((runs / run / "config.json").read_text())
        assert config["threads"] == 1 and config["workers"] == 0
    assert "weighted average" in result.output
