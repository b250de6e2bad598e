"""Image files for the recognizer as a tool (`clipocr read`, `Reader`): finding, decoding, naming.

Files are decoded exactly as the benchmark protocol decodes its LMDB images (full PIL decode,
RGB, bicubic 32×128; `pipeline.preprocess`), so what `clipocr read` prints is what `clipocr-eval`
would score. A file that cannot be read gives an error string instead of stopping the others —
whatever PIL raises, the decompression-bomb guard included (issue 23).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipocr.pipeline.preprocess import decode_uint8

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# `tsv_field`'s escapes: a backslash first, so an escaped name reads back unambiguously.
_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


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


def decode_bytes(data: bytes) -> tuple[np.ndarray | None, str]:
    """Encoded image bytes → (uint8 pixels ``(3, 32, 128)``, "") or (None, why not)."""
    try:
        return decode_uint8(data), ""  # the protocol's full decode
    except UnidentifiedImageError:  # its message only names an in-memory buffer
        return None, "not a readable image (no image format PIL knows)"
    except Image.DecompressionBombError as err:
        return None, f"too large to decode safely ({err})"
    except MemoryError:
        return None, "too large to decode (out of memory)"
    except Exception as err:  # PIL raises many types on corrupt data (OSError, ValueError, …)
        return None, f"not a readable image ({type(err).__name__}: {err})"


def _decode(path: Path) -> tuple[np.ndarray | None, str]:
    """A file → (pixels, "") or (None, why it cannot be read)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "no such file"
    except IsADirectoryError:
        return None, "is a directory"
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"
    return decode_bytes(data)


def tsv_field(text: str) -> str:
    """`text` safe for one TSV field: backslash, tab, newline and carriage return written as
    ``\\\\``, ``\\t``, ``\\n``, ``\\r`` (the convention of PostgreSQL's text COPY and of
    ``text/tab-separated-values`` readers), so a file name holding them stays one field on one
    row; a name's bytes that are not UTF-8 (Python keeps them as lone surrogates, which no UTF-8
    stream can print) as ``\\xNN``."""
    if not any(c in _TSV_ESCAPES or "\udc80" <= c <= "\udcff" for c in text):
        return text
    return "".join(
        _TSV_ESCAPES.get(c, f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else c)
        for c in text
    )
