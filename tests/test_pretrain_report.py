"""Pretraining outputs: fp16 teacher weights, history and the TEACHER.md record."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from clipocr.cache_teacher.pretrain_config import PretrainConfig
from clipocr.cache_teacher.pretrain_report import (
    PretrainResult,
    save_teacher,
    write_history,
    write_report,
)


def _result(**kw) -> PretrainResult:
    base = dict(status="finished", train_samples=64, train_labels=60, rejected={}, val_words=20,
                val_dropped_seen=1, params=1234, steps=30, samples=480, minutes=0.5,
                weights_bytes=2_000_000, loss_window=30, final_loss=1.5, final_clip_loss=0.5,
                final_ctc_loss=1.0)  # fmt: skip
    return PretrainResult(**{**base, **kw})


def test_report_records_how_and_how_well(tmp_path):
    cfg = PretrainConfig(data=["w1", "w2"], val="v", out=str(tmp_path), steps=30, seed=7,
                         command="clipocr teacher-pretrain …", notes="rendered words")  # fmt: skip
    history = [{"kind": "eval", "step": 30, "minutes": 0.5, "top1@20": 0.25, "ctc_word_acc": 0.1}]
    write_report(tmp_path, cfg, _result(loaded={"top1@20": 0.3}), history)
    text = (tmp_path / "TEACHER.md").read_text()
    assert "Status: **finished** — 30 steps, 480 samples, 0.5 min on 1 CPU thread(s)." in text
    assert "clipocr teacher-pretrain …" in text and "rendered words" in text
    assert "Seed 7; training data `w1`, `w2` (64 samples, 60 distinct words)" in text
    assert "1,234 parameters" in text and "| 30 | 0.5 | 0.250 | 0.100 |" in text
    assert "(fp16): top1@20 0.300." in text
    write_report(tmp_path, cfg, _result(), history)
    assert "Re-measured" not in (tmp_path / "TEACHER.md").read_text()  # nothing loaded yet
    assert not list(tmp_path.glob(".*.tmp"))


def test_result_defaults_before_the_first_checkpoint():
    result = PretrainResult("running", 1, 1, {}, 0, 0, 10)
    assert result.steps == 0 and result.loaded is None
    assert set(result.to_dict()) >= {"final_loss", "weights_bytes", "loaded"}


def test_teacher_weights_are_fp16_and_history_is_json(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_teacher(model, {"kind": "test"}, tmp_path / "t")
    state = load_file(str(path))
    assert set(state) == {"weight", "bias"}
    assert all(v.dtype == torch.float16 for v in state.values())
    assert json.loads((tmp_path / "t" / "teacher.json").read_text()) == {"kind": "test"}
    write_history(tmp_path / "t", [{"step": 1}])
    assert json.loads((tmp_path / "t" / "history.json").read_text()) == [{"step": 1}]
