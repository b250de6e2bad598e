"""`--keep-best K`: the K students of best mean validation accuracy, ranked, pruned, resumed, and
exported as RUN/student.safetensors when asked (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipocr.train_student.checkpoint import load_student
from clipocr.train_student.keep_best import BEST_RECORD, BestKeeper, val_score
from clipocr.train_student.model import Student, student_config


@pytest.fixture(scope="module")
def students() -> list[Student]:
    torch.manual_seed(0)
    return [Student(student_config("test")) for _ in range(2)]


def _record(*accs: float) -> dict[str, float]:
    return {**{f"val_acc/set{i}": a for i, a in enumerate(accs)}, "val_ctc_acc/set0": 99.0}


def test_score_is_the_mean_word_accuracy() -> None:
    assert val_score(_record(80.0, 60.0)) == 70.0
    assert val_score({"val_ctc_acc/x": 1.0}) is None


def test_keeps_the_best_k_and_exports_the_best(tmp_path: Path, students) -> None:
    a, b = students
    keeper = BestKeeper(tmp_path, keep=2, resumed_at=None)
    # Ties rank the earlier step first, and a tie with the worst kept does not enter.
    scores = {1: 50.0, 2: 70.0, 3: 60.0, 4: 70.0, 5: 70.0, 6: 40.0}
    entered = [keeper.offer(s, _record(v, v), b if s == 2 else a) for s, v in scores.items()]
    assert entered == [True, True, True, True, False, False]
    record = json.loads((tmp_path / BEST_RECORD).read_text())
    assert [(e["step"], e["score"]) for e in record["kept"]] == [(2, 70.0), (4, 70.0)]
    assert record["kept"][0]["val_acc"] == {"set0": 70.0, "set1": 70.0}
    folders = sorted(p.name for p in (tmp_path / "best").iterdir())
    assert folders == ["step-00000002", "step-00000004"]

    final = tmp_path / "student.safetensors"
    keeper.export(final, "best", 6, a)
    assert final.read_bytes() == (tmp_path / record["kept"][0]["path"]).read_bytes()
    loaded = load_student(final)
    assert torch.equal(loaded.head.weight, b.head.weight)
    exported = json.loads((tmp_path / BEST_RECORD).read_text())["student.safetensors"]
    assert exported == {"from": "best", "step": 2, "score": 70.0}
    keeper.export(final, "last", 6, a)
    assert torch.equal(load_student(final).head.weight, a.head.weight)
    assert json.loads((tmp_path / BEST_RECORD).read_text())["student.safetensors"]["from"] == "last"


def test_resume_drops_what_came_after_its_step(tmp_path: Path, students) -> None:
    a = students[0]
    keeper = BestKeeper(tmp_path, keep=3, resumed_at=None)
    for step, score in {2: 10.0, 4: 30.0, 6: 20.0}.items():
        keeper.offer(step, _record(score), a)
    resumed = BestKeeper(tmp_path, keep=3, resumed_at=4)
    assert [e["step"] for e in resumed.kept] == [4, 2]
    assert not (tmp_path / "best" / "step-00000006").exists()
    smaller = BestKeeper(tmp_path, keep=1, resumed_at=4)  # --keep-best may change on resume
    assert [e["step"] for e in smaller.kept] == [4]
    assert len(list((tmp_path / "best").iterdir())) == 1
    BestKeeper(tmp_path, keep=1, resumed_at=None)  # a fresh start in the folder: nothing kept
    assert not (tmp_path / "best").exists()
