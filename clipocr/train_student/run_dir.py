"""A run folder's files, and the rules by which a run starts in it or continues from it.

Layout: ``config.json`` (resolved settings), ``history.jsonl`` (one record per logged step),
``checkpoints/step-N/`` (student + training state, renamed into place when complete) and the
exported ``student.safetensors``. A folder *holds a run* once a checkpoint is finished: before
that there is nothing to resume, so a run that died early (bad input, disk full, killed) leaves
a folder that the next plain `train` may start over in, instead of one that is neither resumable
nor reusable. Everything written under a final name is written to a temporary name first.
Only one process runs in a folder at a time (`run_lock`), so these rules are never raced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipocr.pipeline.errors import InputError
from clipocr.train_student.checkpoint import save_student
from clipocr.train_student.config import TrainConfig
from clipocr.train_student.model import Student

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
HISTORY_NAME = "history.jsonl"
STATE_NAME = "state.pt"
STUDENT_NAME = "student.safetensors"

# Settings that name files: compared as the places they point to, so that `--out runs/a` and
# `--out /abs/runs/a` are the same run. `out` itself is where config.json was found.
_PATH_SETTINGS = ("shards", "teacher_store", "val", "init_from")
_WHY_NOT = {"workers": "the order of the data depends on the number of workers"}
_STATE_KEYS = ("position", "system", "optimizer", "scheduler", "torch_rng", "cuda_rng")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a directory is renamed into place when complete)."""
    root = run_dir / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.exists() else []


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a crash or a full disk never leaves
    a truncated file under the final name."""
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _place(value: Any) -> Any:
    """A local path made absolute (URLs and non-paths as they are)."""
    if isinstance(value, list):
        return [_place(v) for v in value]
    if isinstance(value, str) and value and "://" not in value:
        return str(Path(value).resolve())
    return value


def _read_config(path: Path) -> dict[str, Any]:
    try:
        before = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable, cannot resume this run ({err})") from None
    if not isinstance(before, dict):
        raise InputError(f"{path}: not a run's settings (a JSON object), cannot resume this run")
    return before


def check_run_dir(cfg: TrainConfig, run_dir: Path, resume: bool) -> None:
    """Refuse a fresh run in a folder that holds one, and a resume with other settings."""
    config_path = run_dir / CONFIG_NAME
    if resume:
        if not config_path.exists():
            raise InputError(f"{run_dir}: nothing to resume (no {CONFIG_NAME})")
        before, now = _read_config(config_path), cfg.to_dict()
        changed = []
        for key, value in now.items():
            if key in TrainConfig.RESUMABLE_CHANGES or key == "out":
                continue
            old = before.get(key)
            if key in _PATH_SETTINGS:
                old, value = _place(old), _place(value)
            if old != value:
                changed.append(f"{key} ({_WHY_NOT[key]})" if key in _WHY_NOT else key)
        if changed:
            raise InputError(
                f"{config_path}: --resume with different settings: {', '.join(changed)}"
            )
    elif checkpoint_dirs(run_dir) or (run_dir / STUDENT_NAME).exists():
        raise InputError(f"{run_dir}: already holds a run; use --resume or another --out")
    elif config_path.exists():
        log.warning("%s: a run started here but reached no checkpoint; starting over", run_dir)


def start_history(path: Path, resumed_at: int | None) -> None:
    """A fresh run starts an empty history; a resumed one keeps the records up to the step it
    resumes from (later ones were logged by the interrupted run and are logged again)."""
    if resumed_at is None or not path.exists():
        write_atomic(path, "")
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the torn last line of a killed run
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            if record["step"] <= resumed_at:
                kept.append(line + "\n")
    write_atomic(path, "".join(kept))


def write_checkpoint(run_dir: Path, step: int, student: Student, state: dict, keep: int) -> Path:
    """Write checkpoints/step-N (the student and the training `state`) under a temporary name,
    rename it into place when complete, and drop all but the newest `keep` checkpoints."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_student(tmp / STUDENT_NAME, student)
        # Through a Python file, so that a failed write is an OSError (ENOSPC) and not torch's
        # "unexpected pos" RuntimeError.
        with open(tmp / STATE_NAME, "wb") as fh:
            torch.save(state, fh)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def resume_checkpoint(run_dir: Path, device: torch.device, restore: Callable[[dict], None]) -> Path:
    """`restore` the newest checkpoint's state that reads back and fits; return its folder.

    A truncated, garbage or deleted state.pt costs the steps since the checkpoint before it (a
    warning says so), not the run: older checkpoints are tried in turn. `restore` raising
    InputError (a setting that refuses the resume) is passed on, not taken for damage.
    """
    found = checkpoint_dirs(run_dir)
    if not found:
        raise InputError(
            f"{run_dir}: no finished checkpoint to resume from; start the run again without "
            "--resume"
        )
    why = ""
    for ckpt in reversed(found):
        try:
            state = torch.load(ckpt / STATE_NAME, map_location=device, weights_only=True)
            if not isinstance(state, dict) or not all(k in state for k in _STATE_KEYS):
                raise ValueError("not a training state")
            restore(state)
        except InputError:
            raise
        except Exception as err:  # whatever makes a state unusable, try the one before
            first = str(err).strip().partition("\n")[0]
            why = f"{type(err).__name__}: {first}"
            log.warning("%s: cannot resume from it (%s)", ckpt / STATE_NAME, why)
            continue
        return ckpt
    raise InputError(f"{run_dir}: no checkpoint has a readable {STATE_NAME} (the newest: {why})")
