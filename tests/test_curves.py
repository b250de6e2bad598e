"""`train_student.curves`: loss terms left, every validation accuracy (both heads) right."""

from __future__ import annotations

import json
from pathlib import Path

from clipocr.train_student.curves import _val_label, plot_curves


def test_validation_keys_of_both_heads_go_to_the_accuracy_panel() -> None:
    assert _val_label("val_acc/IIIT5k") == "IIIT5k"
    assert _val_label("val_ctc_acc/IIIT5k") == "ctc IIIT5k"  # was drawn among the loss terms
    assert _val_label("loss/ce") is None
    assert _val_label("loss") is None


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    rows = [
        {"step": 1, "lr": 0.1, "loss": 3.0, "loss/ce": 2.0},
        {"step": 2, "loss": 2.0, "val_acc/a": 10.0, "val_ctc_acc/a": 12.0},
    ]
    history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_curves(history, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
