"""`--log tensorboard`: the run's records as TensorBoard scalars under ``RUN/tensorboard/``.

Through `torch.utils.tensorboard` (the `tensorboard` package: the optional extra ``log``), so no
other dependency. Tags: ``loss/<term>`` for the loss terms, ``train/lr``, ``train/samples_per_s``,
``train/grad_norm``, and the validation keys as they are (``val_acc/<set>``, ``val_ctc_acc/...``).
history.jsonl stays the record that resume and curves.png read; this is a view of it. A resumed
run opens the event files with ``purge_step`` at the resume step, so TensorBoard hides the
interrupted run's records past it (they are logged again) instead of drawing them twice.
"""

from __future__ import annotations

from pathlib import Path

from clipocr.pipeline.errors import InputError

TB_DIR = "tensorboard"
_TRAIN_KEYS = ("lr", "samples_per_s", "grad_norm")


def tag(key: str) -> str:
    """The TensorBoard tag of a history key."""
    if "/" in key:
        return key
    return f"train/{key}" if key in _TRAIN_KEYS else f"loss/{key}"


class TensorBoardLog:
    """Scalars of one run; `write` a history record, `close` at the end."""

    def __init__(self, run_dir: Path, resumed_at: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise InputError(
                "train: --log tensorboard needs the tensorboard package: pip install 'clipocr[log]'"
            ) from None
        purge = resumed_at + 1 if resumed_at is not None else None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR), purge_step=purge)

    def write(self, step: int, record: dict[str, float]) -> None:
        for key, value in record.items():
            self.writer.add_scalar(tag(key), value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
