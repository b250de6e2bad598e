"""The inference checkpoint: the student alone, as safetensors with its config in the metadata.

Self-describing on purpose: the official code rebuilds the model class from the path string and
saves CLIP inside every checkpoint (DESIGN §6). Here the file carries a format marker, the format
version, the clipocr version and the `StudentConfig` JSON, so `load_student` needs nothing but the
path, and anything else (a torch pickle, another safetensors model, garbage) is refused with a
one-line `InputError` instead of a stack trace. safetensors also means loading runs no pickled code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from clipocr import __version__
from clipocr.pipeline.errors import InputError
from clipocr.train_student.model import Student, StudentConfig

FORMAT = "clipocr-student"
FORMAT_VERSION = "1"
# The student shipped with the package (record: assets/student/STUDENT.md), so that `clipocr read`
# works on a fresh install without training anything.
BUNDLED_STUDENT = Path(__file__).resolve().parents[1] / "assets" / "student" / "student.safetensors"


def save_student(path: str | os.PathLike, model: Student) -> None:
    """Write `model`'s weights and config to `path` (atomically: a crash leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "clipocr_version": __version__,
        "config": json.dumps(model.cfg.to_dict()),
    }
    tmp = path.with_name(path.name + ".tmp")
    # Serialised here and written by Python, so a full disk raises OSError (ENOSPC): safetensors'
    # own file writer reports it as a SafetensorError, and on some targets not at all.
    data = save(state, metadata=metadata)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_student(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Student:
    """The student saved at `path`, on `map_location`, in eval mode."""
    path = Path(path)

    def refuse(why: str) -> InputError:
        return InputError(f"{path}: not a clipocr student checkpoint ({why})")

    if not path.is_file():
        raise refuse("no such file" if not path.exists() else "not a regular file")
    try:
        with safe_open(path, framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise refuse(f"safetensors file without the {FORMAT!r} format marker")
            if meta.get("format_version") != FORMAT_VERSION:
                raise refuse(f"format version {meta.get('format_version')!r} is not supported")
            state = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise refuse(f"not a safetensors file: {err}") from None
    try:
        cfg = StudentConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise refuse(f"bad config metadata: {err}") from None
    model = Student(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise refuse(f"weights do not match its config: {' '.join(first[:2])}") from None
    return model.to(map_location).eval()
