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
import struct
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
    data = sorted_header(save(state, metadata=metadata))
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sorted_header(data: bytes) -> bytes:
    """A serialised safetensors file with its JSON header's keys in sorted order.

    Why: safetensors keeps ``__metadata__`` in a Rust HashMap, whose order is random per process,
    so the same weights would give files with different bytes. The tensor data (and the offsets
    into it) are unchanged; only the header is rewritten, padded to 8 bytes as safetensors pads."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + size :]


def _check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse NaN or infinite weights, naming the first tensor that holds one."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(
                f"{path}: tensor {key} holds non-finite values (NaN or inf); the checkpoint is "
                "damaged or its training diverged"
            )


def read_checkpoint(
    path: str | os.PathLike, tensors: bool = True
) -> tuple[StudentConfig, dict[str, torch.Tensor]]:
    """The config and (unless `tensors` is False: the config alone, cheaply) the finite weights
    of the student saved at `path`; anything else is refused in one line naming the file."""
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
            state = {key: fh.get_tensor(key) for key in fh.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError) as err:
        raise refuse(f"not a safetensors file: {err}") from None
    try:
        cfg = StudentConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise refuse(f"bad config metadata: {err}") from None
    _check_finite(path, state)
    return cfg, state


def load_student(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Student:
    """The student saved at `path`, on `map_location`, in eval mode."""
    cfg, state = read_checkpoint(path)
    model = Student(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise InputError(
            f"{path}: not a clipocr student checkpoint (weights do not match its config: "
            f"{' '.join(first[:2])})"
        ) from None
    return model.to(map_location).eval()
