"""Where a run's records go: history.jsonl always, TensorBoard with ``--log tensorboard``, and
every validation to the best-student keeper (``--keep-best``). One object so the training loop
writes a record once, whatever the sinks; on a rank other than 0 (DDP) it writes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TextIO

from clipocr.train_student.config import TrainConfig
from clipocr.train_student.keep_best import BestKeeper
from clipocr.train_student.model import Student
from clipocr.train_student.run_dir import HISTORY_NAME, STUDENT_NAME, start_history
from clipocr.train_student.tb_log import TensorBoardLog


class RunLog:
    """Opened when the run has really started (`run_dir`), closed when it ends."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resumed_at: int | None, main: bool):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.main = main
        self.history_path = self.run_dir / HISTORY_NAME
        self.tb: TensorBoardLog | None = None
        self.best: BestKeeper | None = None
        if not main:
            self.history: TextIO = open(os.devnull, "w")
            return
        start_history(self.history_path, resumed_at)
        self.history = open(self.history_path, "a")
        if cfg.log == "tensorboard":
            self.tb = TensorBoardLog(self.run_dir, resumed_at)
        if cfg.keep_best:
            self.best = BestKeeper(self.run_dir, cfg.keep_best, resumed_at)

    def write(self, step: int, record: dict[str, float]) -> None:
        """One history record (and its TensorBoard scalars)."""
        self.history.write(json.dumps({"step": step, **record}) + "\n")
        self.history.flush()
        if self.tb is not None:
            self.tb.write(step, record)

    def validation(self, step: int, record: dict[str, float], student: Student) -> None:
        self.write(step, record)
        if self.best is not None:
            self.best.offer(step, record, student)

    def export(self, step: int, student: Student) -> Path:
        """RUN/student.safetensors: the last or the best student (`TrainConfig.export`)."""
        final = self.run_dir / STUDENT_NAME
        if self.best is not None:
            self.best.export(final, self.cfg.export, step, student)
        else:
            from clipocr.train_student.checkpoint import save_student

            save_student(final, student)
        return final

    def close(self) -> None:
        self.history.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None
