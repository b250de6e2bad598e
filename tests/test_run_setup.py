"""`train_student.run_setup.resolve_augment`: augmentation's default follows the teacher store."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from clipocr.train_student import run_setup
from clipocr.train_student.config import TrainConfig
from clipocr.train_student.run_setup import resolve_augment


@pytest.fixture
def views(monkeypatch) -> dict:
    """A stand-in store whose manifest says `views["count"]` views per sample."""
    record = {"count": 1, "opened": 0}

    def fake_store(path):
        record["opened"] += 1
        return SimpleNamespace(spec=SimpleNamespace(view_count=record["count"]))

    monkeypatch.setattr(run_setup, "TeacherStore", fake_store)
    return record


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(shards="s", teacher_store="store", **kw)


def test_auto_is_off_for_a_one_view_store_and_on_for_views(views) -> None:
    assert resolve_augment(_cfg()).augment is False  # clean-image targets: no augmentation
    views["count"] = 4
    assert resolve_augment(_cfg()).augment is True  # the views replay the teacher's pixels


def test_auto_is_on_for_a_plain_run_without_opening_a_store(views) -> None:
    cfg = resolve_augment(TrainConfig(shards="s", distill=False))
    assert cfg.augment is True and views["opened"] == 0


def test_an_explicit_choice_is_kept_and_a_mismatch_is_warned(views, caplog) -> None:
    assert resolve_augment(_cfg(augment=False)).augment is False
    with caplog.at_level(logging.WARNING, logger=run_setup.__name__):
        assert resolve_augment(_cfg(augment=True)).augment is True
    assert "clean image's features" in caplog.text and "--views" in caplog.text
    views["count"] = 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=run_setup.__name__):
        resolve_augment(_cfg(augment=True))
    assert caplog.text == ""


def test_the_resolved_value_is_what_a_run_records(views, tmp_path) -> None:
    cfg = resolve_augment(_cfg(out=str(tmp_path / "run")))
    cfg.save(tmp_path / "config.json")
    assert '"augment": false' in (tmp_path / "config.json").read_text()


class _DyingIterator:
    """Yields one batch, then fails as a killed worker's hand-over does."""

    def __init__(self) -> None:
        self.left, self.shut = 1, False

    def __iter__(self):
        return self

    def __next__(self):
        if self.left:
            self.left -= 1
            return "batch"
        raise ConnectionResetError("Connection reset by peer")

    def _shutdown_workers(self) -> None:
        self.shut = True


def test_a_failed_fetch_lets_the_workers_go_before_the_error_leaves() -> None:
    """Else torch's SIGCHLD handler raises a second error later, while the first is reported."""
    dying = _DyingIterator()
    got = []
    with pytest.raises(ConnectionResetError):
        for batch in run_setup.worker_safe_batches(_Loader(dying)):
            got.append(batch)
            assert not dying.shut
    assert got == ["batch"] and dying.shut


class _Loader:
    def __init__(self, it) -> None:
        self.it = it

    def __iter__(self):
        return self.it
