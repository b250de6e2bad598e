"""Typed `teacher-pretrain` settings: defaults ← optional JSON file ← explicitly given values.

The resolved settings are written next to the teacher as ``pretrain_args.json`` (with the torch
and open_clip versions that made it), the record that TEACHER.md points to; the same file given
back as the config file repeats the run's settings (the bundled teacher's record among them).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch

from clipocr.pipeline.config_file import check_values, read_values
from clipocr.pipeline.errors import InputError

ARGS_NAME = "pretrain_args.json"
# What a saved record holds besides settings: the command line and library versions of the run
# that wrote it. Read back from a file they would describe the wrong run, so they are dropped.
RECORDED_KEYS = ("command", "torch", "open_clip")


@dataclass
class PretrainConfig:
    data: list[str] = field(default_factory=list)  # LMDBs of rendered training words
    val: str | None = None  # LMDB of held-out words for retrieval accuracy
    out: str = ""  # folder for the teacher config, weights, history and report
    # budget: whichever comes first; the lr schedule follows steps when given, else wall time
    steps: int | None = None
    minutes: float | None = None
    # optimisation
    batch_size: int = 128
    lr: float = 1e-3  # the CLI's default since the first release
    warmup: int = 200
    weight_decay: float = 0.1
    ctc_weight: float = 1.0  # auxiliary per-character CTC loss on the image tokens (0 = off)
    seed: int = 0
    threads: int = 1
    # model (`small_teacher_config`)
    charset: str = "36"
    width: int = 128
    layers: int = 4
    heads: int = 4
    embed_dim: int = 256
    patch: tuple[int, int] = (32, 4)
    # data limits and bookkeeping
    max_train: int | None = None
    val_size: int = 1000
    eval_every_min: float = 5.0
    log_every: int = 20
    command: str | None = None  # recorded in TEACHER.md; None = this process's command line
    notes: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [self.data]
        self.data = [str(p) for p in self.data]
        self.out = str(self.out)
        if self.val is not None:
            self.val = str(self.val)
        self.patch = tuple(self.patch)
        if not self.data or not self.out:
            raise InputError("teacher-pretrain: --data and --out are required")
        if self.steps is None and self.minutes is None:
            raise InputError("give --steps or --minutes (the training budget)")
        if self.steps is not None and self.steps < 1:  # 0 wrote an untrained "teacher"
            raise InputError(f"--steps {self.steps}: must be at least 1")
        if self.minutes is not None and not self.minutes > 0:
            raise InputError(f"--minutes {self.minutes}: must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self) -> Path:
        """Write the settings and the library versions to ``OUT/pretrain_args.json``."""
        out = Path(self.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {
            **self.to_dict(),
            "patch": list(self.patch),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        }
        path = out / ARGS_NAME
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_sources(
        cls, config_file: Path | None, overrides: dict[str, Any] | None = None
    ) -> PretrainConfig:
        """Defaults, then the JSON file's values, then `overrides` (None values are not given)."""
        values = read_values(config_file)
        for key in RECORDED_KEYS:
            values.pop(key, None)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        check_values(cls, values, str(config_file or "teacher-pretrain"))
        return cls(**values)
