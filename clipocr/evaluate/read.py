"""Reading image files with a trained student: the recognizer as a tool (`clipocr read`).

Files are decoded exactly as the benchmark protocol decodes its LMDB images (full PIL decode,
RGB, bicubic 32×128), so what `clipocr read` prints is what `clipocr-eval` would score. A file
that cannot be read becomes a `Reading` with an error instead of stopping the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import UnidentifiedImageError

from clipocr.pipeline.preprocess import load_uint8, normalize
from clipocr.train_student.model import Student

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class Reading:
    """One file's result: the text and its confidence, or why the file could not be read."""

    path: str
    text: str = ""
    confidence: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to the image files below them (sorted, recursively).

    A named file is kept whatever its suffix (the user asked for it); a missing path is kept
    too, so that it is reported as an error in its place rather than silently dropped.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            found.append(path)
    return found


def _decode(path: Path) -> tuple[torch.Tensor | None, str]:
    try:
        return load_uint8(path.read_bytes()), ""  # the protocol's full decode
    except FileNotFoundError:
        return None, "no such file"
    except IsADirectoryError:
        return None, "is a directory"
    except UnidentifiedImageError:  # its message only names an in-memory buffer
        return None, "not a readable image (no image format PIL knows)"
    except (OSError, ValueError, SyntaxError) as err:
        return None, f"not a readable image ({type(err).__name__}: {err})"


def read_images(student: Student, paths: Sequence[Path], batch_size: int = 64) -> Iterator[Reading]:
    """`Reading`s in the order of `paths`, decoding and reading `batch_size` files at a time."""
    device = next(student.parameters()).device
    student.eval()
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        decoded = [_decode(p) for p in chunk]
        images = [img for img, _ in decoded if img is not None]
        texts = iter(student.read(normalize(torch.stack(images).to(device))) if images else [])
        for path, (img, error) in zip(chunk, decoded, strict=True):
            if img is None:
                yield Reading(str(path), error=error)
            else:
                text, confidence = next(texts)
                yield Reading(str(path), text, confidence)
