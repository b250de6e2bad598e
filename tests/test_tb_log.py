"""`--log tensorboard`: history records as TensorBoard scalars, tagged by kind; a resumed run
hides the interrupted run's records past its step (issue 21)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipocr.pipeline.errors import InputError
from clipocr.train_student.tb_log import TB_DIR, TensorBoardLog, tag


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard would draw from RUN/tensorboard, by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / TB_DIR))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tags() -> None:
    assert [tag(k) for k in ("ce", "loss", "lr", "samples_per_s", "val_acc/IIIT5k")] == [
        "loss/ce", "loss/loss", "train/lr", "train/samples_per_s", "val_acc/IIIT5k"
    ]  # fmt: skip


def test_scalars_are_written_and_a_resume_purges_later_steps(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    log = TensorBoardLog(tmp_path, resumed_at=None)
    for step in (1, 2, 3):
        log.write(step, {"ce": 1.0 / step, "lr": 0.1})
    log.close()
    log = TensorBoardLog(tmp_path, resumed_at=1)  # the run resumed from step 1's checkpoint
    log.write(2, {"ce": 0.25, "lr": 0.1})
    log.write(2, {"val_acc/a": 50.0})
    log.close()
    got = scalars(tmp_path)
    assert got["loss/ce"] == [(1, 1.0), (2, 0.25)]
    assert got["val_acc/a"] == [(2, 50.0)]


def test_without_tensorboard_it_is_one_line(monkeypatch, tmp_path: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("TensorBoard logging requires TensorBoard version 1.15 or above")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(InputError, match=r"pip install 'clipocr\[log\]'"):
        TensorBoardLog(tmp_path, resumed_at=None)
