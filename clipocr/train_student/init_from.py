"""`train --init-from CHECKPOINT`: start a run from a trained student instead of random weights.

What PARSeq's ``pretrained=``, docTR's ``pretrained_backbone`` and MMOCR's ``load_from`` do:
fine-tune a trained recognizer on one's own crops. The architecture is the checkpoint's: with
``--init-from`` and no ``--preset``, the run's preset and `student` settings are set to what the
checkpoint was built with (`resolve_architecture`), so config.json says exactly what is trained;
a ``--preset`` or `student` setting that would change a tensor's shape is refused in one line.
Only the charset (and dropout, and the weight of an existing CTC head) may differ.

Loading (`init_student`): every tensor whose name and shape match is copied. The tensors indexed
by symbol (the character embedding and the classifiers: `CHARSET_ROWS`) are copied row by row for
the symbols both charsets hold, plus EOS/BOS/PAD; the rows of new symbols keep their fresh
initialisation. The distillation heads are never in a student checkpoint, so they start fresh,
and with a teacher store whose dims differ from the checkpoint's run nothing breaks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.train_student.checkpoint import BUNDLED_STUDENT, read_checkpoint
from clipocr.train_student.model import Student
from clipocr.train_student.student_config import PRESETS, StudentConfig, student_config

BUNDLED = "bundled"
INIT_RECORD = "init_from.json"
# Tensors whose rows are symbols: the token embedding (EOS, chars, BOS, PAD) and the classifiers
# (EOS, chars). Their rows are matched by symbol, not by position.
CHARSET_ROWS = ("tok_embed.weight", "head.weight", "head.bias", "ctc_head.weight", "ctc_head.bias")
# StudentConfig fields a fine-tuning run may change without changing any shape the checkpoint
# fixes (the charset's rows are re-mapped; `ctc_weight` only while the CTC head exists on both).
FREE_FIELDS = ("charset", "dropout", "ctc_weight")


def source_path(value: str) -> Path:
    """The file `--init-from` names: a path, or the word ``bundled`` for the packaged student."""
    return BUNDLED_STUDENT if value == BUNDLED else Path(value).expanduser()


def _differences(a: StudentConfig, b: StudentConfig) -> dict[str, tuple[Any, Any]]:
    """Fields of `a` and `b` that differ in a way that changes the network's tensors."""
    out = {}
    for f in fields(StudentConfig):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "ctc_weight" and (x > 0) == (y > 0) or f.name in FREE_FIELDS[:2]:
            continue
        if x != y:
            out[f.name] = (x, y)
    return out


def _as_preset(arch: StudentConfig) -> tuple[str, dict[str, Any]]:
    """The preset nearest `arch` and the `student` settings that turn it into `arch`."""
    best = None
    for name, preset in PRESETS.items():
        diff = {
            f.name: getattr(arch, f.name)
            for f in fields(StudentConfig)
            if f.name != "charset" and getattr(arch, f.name) != getattr(preset, f.name)
        }
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    name, diff = best
    return name, {k: list(v) if isinstance(v, tuple) else v for k, v in diff.items()}


def resolve_architecture(values: dict[str, Any], source: str) -> None:
    """Fill in `values` (a config's explicitly given settings) from ``values["init_from"]``.

    Without ``--charset`` the checkpoint's charset is kept; without ``--preset`` the preset and
    `student` settings become the checkpoint's (`student` settings given are laid over them).
    Whatever was given must build the checkpoint's shapes, or this raises one line."""
    path = source_path(values["init_from"])
    arch, _ = read_checkpoint(path, tensors=False)
    values.setdefault("charset", arch.charset)
    given = dict(values.get("student") or {})
    if "preset" not in values:
        values["preset"], student = _as_preset(arch)
        values["student"] = {**student, **given}
    try:
        built = student_config(values["preset"], **dict(values.get("student") or {}))
    except (TypeError, ValueError):
        return  # TrainConfig's own checks name the bad setting
    diff = _differences(built, arch)
    if diff:
        shown = ", ".join(f"{k} {new!r} (checkpoint: {old!r})" for k, (new, old) in diff.items())
        raise InputError(
            f"{source}: --init-from {path}: the student settings given change its "
            f"architecture: {shown}; leave out --preset (and those student settings) to "
            "train the checkpoint's"
        )


@dataclass
class InitReport:
    """What `init_student` took from the checkpoint (written to RUN/init_from.json)."""

    source: str
    sha256: str
    charset_from: str
    charset_to: str
    copied: int = 0  # tensors copied whole
    remapped: dict[str, str] = field(default_factory=dict)  # tensor → "rows carried of rows"
    fresh: list[str] = field(default_factory=list)  # tensors left at their initialisation
    new_symbols: str = ""  # symbols of the run's charset the checkpoint never read

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def _row_pairs(src: Charset, dst: Charset, rows: int) -> tuple[list[int], list[int]]:
    """(destination rows, source rows) of the symbols both charsets hold, EOS first and, for
    the token embedding (`rows` = symbols + 3), BOS and PAD last."""
    dst_rows, src_rows = [dst.eos_id], [src.eos_id]
    for j, ch in enumerate(dst.chars, start=1):
        i = src.chars.find(ch)
        if i >= 0:
            dst_rows.append(j)
            src_rows.append(i + 1)
    if rows == dst.pad_id + 1:
        dst_rows += [dst.bos_id, dst.pad_id]
        src_rows += [src.bos_id, src.pad_id]
    return dst_rows, src_rows


def _check_shapes(path: Path, cfg: StudentConfig, state: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint whose tensors do not fit its own config (built on the meta device:
    no memory, no draw from the random generator)."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Student(cfg).state_dict().items()}
    got = {k: v.shape for k, v in state.items()}
    if got != expected:
        bad = sorted(set(got) ^ set(expected)) or [k for k in got if got[k] != expected[k]]
        raise InputError(
            f"{path}: not a clipocr student checkpoint (weights do not match its config: "
            f"{', '.join(bad[:3])})"
        )


@torch.no_grad()
def init_student(student: Student, value: str) -> InitReport:
    """Load the checkpoint `value` names into `student` (see the module's docstring)."""
    path = source_path(value)
    cfg, state = read_checkpoint(path)
    _check_shapes(path, cfg, state)
    diff = _differences(student.cfg, cfg)
    if diff:  # a config built without `resolve_architecture` (the Python API)
        shown = ", ".join(f"{k} {new!r} (checkpoint: {old!r})" for k, (new, old) in diff.items())
        raise InputError(f"--init-from {path}: the run's student differs from it: {shown}")
    src, dst = Charset.from_name(cfg.charset, cfg.max_len), student.charset
    report = InitReport(
        source=str(path.resolve()),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        charset_from=src.name,
        charset_to=dst.name,
        new_symbols="".join(c for c in dst.chars if c not in src.chars),
    )
    same_charset = src.chars == dst.chars
    for name, tensor in student.state_dict().items():
        loaded = state.get(name)
        if name in CHARSET_ROWS and loaded is not None and not same_charset:
            dst_rows, src_rows = _row_pairs(src, dst, tensor.shape[0])
            tensor[dst_rows] = loaded[src_rows].to(tensor.dtype)
            report.remapped[name] = f"{len(dst_rows)} of {tensor.shape[0]} rows"
        elif loaded is not None and loaded.shape == tensor.shape:
            tensor.copy_(loaded)
            report.copied += 1
        else:
            report.fresh.append(name)
    return report
