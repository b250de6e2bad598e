"""RunLog: one record goes to history.jsonl (and TensorBoard, and the best-student keeper) on
rank 0, nowhere on the other ranks; a resumed run keeps the history up to its step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipocr.train_student.checkpoint import load_student
from clipocr.train_student.config import TrainConfig
from clipocr.train_student.model import Student, student_config
from clipocr.train_student.run_log import RunLog


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def test_records_and_the_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = Student(student_config("test"))
    cfg = TrainConfig(shards="s", distill=False, val=["v"], keep_best=1)
    log = RunLog(cfg, tmp_path, resumed_at=None, main=True)
    log.write(1, {"ce": 2.0, "lr": 0.1})
    log.validation(2, {"val_acc/v": 50.0}, student)
    final = log.export(2, student)
    log.close()
    assert _history(tmp_path) == [{"step": 1, "ce": 2.0, "lr": 0.1}, {"step": 2, "val_acc/v": 50.0}]
    assert (tmp_path / "best" / "step-00000002" / "student.safetensors").is_file()
    assert torch.equal(load_student(final).head.weight, student.head.weight)

    resumed = RunLog(cfg, tmp_path, resumed_at=1, main=True)  # resumed from step 1's checkpoint
    resumed.close()
    assert _history(tmp_path) == [{"step": 1, "ce": 2.0, "lr": 0.1}]
    assert not (tmp_path / "best" / "step-00000002").exists()


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    cfg = TrainConfig(shards="s", distill=False)
    log = RunLog(cfg, tmp_path / "run", resumed_at=None, main=False)
    log.write(1, {"ce": 1.0})
    log.close()
    assert not (tmp_path / "run").exists()


def test_tensorboard_is_a_view_of_the_history(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from test_tb_log import scalars

    cfg = TrainConfig(shards="s", distill=False, log="tensorboard")
    log = RunLog(cfg, tmp_path, resumed_at=None, main=True)
    log.write(3, {"ce": 1.5, "samples_per_s": 40.0})
    log.close()
    assert scalars(tmp_path) == {"loss/ce": [(3, 1.5)], "train/samples_per_s": [(3, 40.0)]}
