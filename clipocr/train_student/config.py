"""Typed training configuration: defaults ← optional JSON config file ← CLI flags.

The resolved config is written to ``RUN_DIR/config.json`` by every run, and `--resume` checks that
the run it continues was made with the same settings (bar the step budget).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.config_file import check_values, read_values
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.precision import PRECISIONS
from clipocr.train_student.heads import DistillConfig
from clipocr.train_student.student_config import PRESETS, StudentConfig, student_config


@dataclass
class TrainConfig:
    shards: str = ""
    teacher_store: str | None = None
    out: str = "runs/student"
    preset: str = "small"
    charset: str = "36"
    distill: bool = True
    # a student checkpoint (or "bundled") to start from; its architecture is the run's
    init_from: str | None = None
    # StudentConfig fields replaced in the preset, e.g. {"ctc_weight": 0.5} (saved in config.json)
    student: dict[str, Any] = field(default_factory=dict)
    # optimisation (official recipe, PARSeq base; DESIGN §6)
    batch_size: int = 160
    lr: float = 1.4e-3  # base lr, scaled by sqrt(world_size) · batch_size / 256 as PARSeq does
    weight_decay: float = 0.0
    epochs: int = 5
    max_steps: int | None = None  # overrides epochs when set
    warmup_pct: float = 0.075
    grad_clip: float = 20.0
    dec_lr_scale: float = 1.0  # decoder side's lr ÷ the rest's (1 = one rate, as the paper)
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or bf16 | fp16 | fp32
    # distillation heads and loss terms (λ1, λ2, τ, L1 vs LCL, per-term weights and switches)
    heads: DistillConfig = field(default_factory=DistillConfig)
    # data
    workers: int = 2
    threads: int | None = None  # torch intra-op threads on CPU; None = cores minus workers
    shuffle_buffer: int = 1000
    open_shards: int = 8  # shards each DataLoader worker interleaves (mixing across shards)
    # None = auto (`run_setup.resolve_augment`): on for a plain run or a K-view store, off when
    # distilling from a 1-view store, whose targets are the clean image's (issue 19 measurement)
    augment: bool | None = None
    augment_from_epoch: int = 0  # clean images for the first N epochs, then augmented (issue 13)
    augment_on: str = "host"  # host: PIL in the DataLoader workers; device: the batch, batched
    # a K-view store (issue 19) whose views would not replay bit for bit here: train anyway (the
    # log says how many probe pixels differ) instead of refusing it
    allow_view_drift: bool = False
    seed: int = 0
    device: str = "auto"
    # bookkeeping
    val: list[str] = field(default_factory=list)
    val_every: int = 500
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    keep_best: int = 0  # also keep the K students of best mean validation word accuracy
    export: str = "last"  # RUN/student.safetensors: the last step's student, or the best kept
    log: str = "none"  # none | tensorboard (RUN/tensorboard/, needs the `log` extra)
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.distill and not self.teacher_store:
            raise InputError("train: --teacher-store is required unless --no-distill is given")
        if self.precision not in PRECISIONS:
            raise InputError(f"train: unknown --precision {self.precision!r}")
        at_least = {"batch_size": 1, "epochs": 1, "max_steps": 1, "threads": 1, "workers": 0,
                    "shuffle_buffer": 1, "open_shards": 1, "val_every": 1, "ckpt_every": 1,
                    "keep_checkpoints": 1,
                    "keep_best": 0, "log_every": 1, "lr": 0.0, "grad_clip": 0.0,
                    "weight_decay": 0.0}  # fmt: skip
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and not value >= low:
                raise InputError(f"train: {name} must be >= {low}, got {value}")
        if self.preset not in PRESETS:
            raise InputError(
                f"train: unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}"
            )
        if self.dec_lr_scale <= 0 or self.augment_from_epoch < 0:
            raise InputError("train: dec_lr_scale must be > 0 and augment_from_epoch >= 0")
        if self.augment_on not in ("host", "device"):
            raise InputError(f"train: augment_on must be host or device, got {self.augment_on!r}")
        # Key by key first: a wrongly typed value would fail inside StudentConfig's own checks.
        sections = {"student": self.student, "heads": self.heads}
        check_values(TrainConfig, sections, "train", nested={"student": StudentConfig})
        # A charset file or literal is recorded by its symbols: a run's config.json and its
        # checkpoints must rebuild the alphabet on a machine that lacks the file.
        self.charset = Charset.from_spec(self.charset).name
        try:
            student_config(self.preset, charset=self.charset, **self.student)
        except (TypeError, ValueError) as err:
            raise InputError(f"train: bad student settings: {err}") from None
        self._check_bookkeeping()
        if not 0.0 <= self.warmup_pct < 1.0:
            raise InputError(f"train: warmup_pct must be in [0, 1), got {self.warmup_pct}")
        if isinstance(self.heads, dict):
            unknown = set(self.heads) - {f.name for f in fields(DistillConfig)}
            if unknown:
                raise InputError(f"train: unknown heads settings {sorted(unknown)}")
            try:
                self.heads = DistillConfig(**self.heads)
            except ValueError as err:
                raise InputError(f"train: {err}") from None

    def _check_bookkeeping(self) -> None:
        """Logging and checkpoint choice: refused now, not after an hour of training."""
        if self.log not in ("none", "tensorboard"):
            raise InputError(f"train: log must be none or tensorboard, got {self.log!r}")
        if self.log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise InputError(
                "train: --log tensorboard needs the tensorboard package: "
                "pip install 'clipocr[log]' (or pip install tensorboard)"
            )
        if self.export not in ("last", "best"):
            raise InputError(f"train: export must be last or best, got {self.export!r}")
        if self.keep_best and not self.val:
            raise InputError("train: --keep-best ranks by validation accuracy: give --val sets")
        if self.export == "best" and not self.keep_best:
            raise InputError("train: --export best needs --keep-best K (K >= 1)")

    # Settings that may differ between a run and its resumption (not `workers`: the data order
    # depends on how the shards are split between the workers).
    RESUMABLE_CHANGES = ("max_steps", "epochs", "val", "val_every", "ckpt_every", "progress",
                         "threads", "device", "log_every", "keep_checkpoints", "keep_best",
                         "export", "log", "allow_view_drift")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        """Write the settings to `path` via a temporary file: a full disk or a crash mid-write
        must not leave a truncated config.json that makes the run unresumable."""
        tmp = path.with_name(f".tmp-{path.name}")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def from_sources(cls, config_file: Path | None, overrides: dict[str, Any]) -> TrainConfig:
        """Defaults, then the JSON file's values, then the explicitly given CLI values."""
        values = read_values(config_file)
        heads = values.pop("heads", {})
        if not isinstance(heads, dict):
            raise InputError(f"{config_file}: heads must be an object of DistillConfig settings")
        heads = {**heads, **overrides.pop("heads", {})}
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["heads"] = heads
        source = str(config_file or "train")
        check_values(cls, values, source, nested={"student": StudentConfig})
        if values.get("init_from"):
            from clipocr.train_student.init_from import resolve_architecture

            resolve_architecture(values, source)
        return cls(**values)
