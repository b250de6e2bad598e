"""`Reader`: the recognizer as a Python object — ``from clipocr import Reader``.

    reader = Reader()                                   # the bundled student, on cuda if any
    for r in reader.read(["sign.jpg", pil_image, numpy_array]):
        print(r.text, r.confidence, r.char_confidences)

What `clipocr read` runs, so the command and the API never disagree. Inputs are decoded as the
benchmark protocol decodes (`read.decode_bytes`, `pipeline.preprocess`): paths, encoded bytes,
PIL images in any mode and numpy arrays (RGB order, channels last) alike. Three backends read
the same uint8 ``(B, 3, 32, 128)`` batches: a student checkpoint (``.safetensors``, PyTorch's
`Student.generate`), or a graph written by `clipocr export` (``.onnx`` through onnxruntime, a
TorchScript file through `torch.jit`), whose greedy decoding gives the same strings.

Importing this module costs torch and PIL, never dask, zarr or open_clip (the student never
needs them; `tests/test_reader.py` checks it in a fresh interpreter).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from clipocr.evaluate.read import _decode, decode_bytes
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import array_image, image_uint8

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]  # noqa: UP007 (a runtime alias)
# uint8 pixels (B, 3, 32, 128) → ids (B, T) and per-step max probabilities (B, T), EOS-padded
Backend = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
ERRORS = ("raise", "report")


@dataclass(frozen=True)
class Reading:
    """One image's result.

    ``text``: what the student reads (its charset's symbols; the bundled student's are lower
    case and digits). ``confidence``: PARSeq's, the product of every step's probability up to
    and including the end of the word — so it also falls when the word may go on.
    ``char_confidences``: the probability of each character of ``text``, in order. ``path``:
    the file's path as given ("" for an in-memory image). ``error``: why the image could not be
    read ("" when it was; then the other fields are empty)."""

    path: str = ""
    text: str = ""
    confidence: float = 0.0
    char_confidences: tuple[float, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def _pixels(item: object) -> tuple[np.ndarray | None, str]:
    """One input → (uint8 pixels ``(3, 32, 128)``, "") or (None, why it cannot be read)."""
    if isinstance(item, (str, os.PathLike)):
        return _decode(Path(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(item))
    try:
        if isinstance(item, Image.Image):
            return image_uint8(item), ""
        if isinstance(item, np.ndarray):
            return image_uint8(array_image(item)), ""
    except (ValueError, OSError) as err:
        return None, f"not a readable image ({err})"
    kind = type(item).__name__
    return None, f"an object of type {kind} is no image (give a path, bytes, PIL image or array)"


def _as_list(images: ImageInput | Iterable[ImageInput]) -> list[object]:
    """A single image (a path, bytes, a PIL image, an array of 2 or 3 dims) as a list of one; a
    4-D array as its images; anything else iterable as its items."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def _reading(path: str, ids: np.ndarray, probs: np.ndarray, charset: Charset) -> Reading:
    """A decoded row: characters before the first EOS, their probabilities, the product."""
    ends = np.flatnonzero(ids == charset.eos_id)
    n = int(ends[0]) if ends.size else len(ids)
    chars = tuple(float(p) for p in probs[:n])
    return Reading(
        path=path,
        text=charset.decode(ids[:n].tolist()),
        confidence=float(np.prod(probs[: n + 1], dtype=np.float64)),
        char_confidences=chars,
    )


def _torch_backend(student, device: str) -> Backend:
    """`Student.generate` on `device`, fed the batch normalised as the benchmark does."""
    import torch

    from clipocr.pipeline.preprocess import normalize

    student = student.to(device).eval()

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, probs = student.generate(normalize(torch.from_numpy(batch).to(device)))
        return ids.cpu().numpy(), probs.float().cpu().numpy()

    return run


def resolve_device(device: str | None) -> str:
    """`None` → cuda when available, else cpu; anything but cpu/cuda[:N] is refused."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: use cpu or cuda (cuda:N)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine")
    return device


class Reader:
    """Reads words from images with a trained student or an exported graph of one.

    ``checkpoint``: None for the bundled student (clipocr/assets/student/), a ``.safetensors``
    student, an ``.onnx`` file or a TorchScript file written by ``clipocr export``. ``device``:
    cpu or cuda[:N], default cuda when available. ``batch_size``: images per forward pass.
    ``threads``: CPU threads of an ONNX Runtime session (default: its own choice); a PyTorch
    backend uses torch's process-wide setting (`torch.set_num_threads`).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str | None = None,
        batch_size: int = 64,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size {batch_size}: must be at least 1")
        self.batch_size = batch_size
        self.device = resolve_device(device)
        path = Path(checkpoint) if checkpoint is not None else None
        if path is not None and path.suffix.lower() == ".onnx":
            from clipocr.evaluate.graph_backend import onnx_backend

            self._run, self.charset = onnx_backend(path, self.device, threads)
        elif path is not None and _is_zip(path):
            from clipocr.evaluate.graph_backend import torchscript_backend

            self._run, self.charset = torchscript_backend(path, self.device)
        else:
            from clipocr.train_student.checkpoint import BUNDLED_STUDENT, load_student

            student = load_student(path or BUNDLED_STUDENT, map_location=self.device)
            self._run, self.charset = _torch_backend(student, self.device), student.charset
        self.checkpoint = str(path) if path is not None else "bundled"

    @classmethod
    def from_student(cls, student, batch_size: int = 64) -> Reader:
        """A reader around a student already in memory (on its own device)."""
        import torch

        self = cls.__new__(cls)
        self.batch_size, self.checkpoint, self.charset = batch_size, "in memory", student.charset
        param = next(student.parameters(), None)
        self.device = str(param.device) if param is not None else str(torch.device("cpu"))
        self._run = _torch_backend(student, self.device)
        return self

    def read(
        self, images: ImageInput | Iterable[ImageInput], *, errors: str = "raise"
    ) -> list[Reading]:
        """A `Reading` per image, in order. `images`: one image or many — paths, encoded bytes,
        PIL images or numpy arrays, mixed as you like. `errors`: ``"raise"`` (an `InputError`
        naming the first image that cannot be read) or ``"report"`` (its `Reading` carries
        ``error`` and the others are read)."""
        return list(self.iter_read(images, errors=errors))

    def iter_read(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        errors: str = "report",
        progress: bool = False,
    ) -> Iterator[Reading]:
        """`read`, one batch at a time (what the command streams). `progress`: a tqdm bar on
        stderr, shown when there is more than one batch."""
        if errors not in ERRORS:
            raise ValueError(f"errors={errors!r}: use one of {ERRORS}")
        items = _as_list(images)
        bar = None
        if progress and len(items) > self.batch_size:
            from tqdm import tqdm

            bar = tqdm(total=len(items), unit="img", desc="reading")
        try:
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                yield from self._read_batch(chunk, start, errors)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()

    def _read_batch(self, chunk: Sequence[object], start: int, errors: str) -> Iterator[Reading]:
        decoded = [_pixels(item) for item in chunk]
        names = [
            str(item) if isinstance(item, (str, os.PathLike)) else "" for item in chunk
        ]  # fmt: skip
        if errors == "raise":
            for i, (pixels, error) in enumerate(decoded):
                if pixels is None:
                    raise InputError(f"{names[i] or f'image {start + i}'}: {error}")
        good = [pixels for pixels, _ in decoded if pixels is not None]
        rows = iter(())
        if good:
            ids, probs = self._run(np.stack(good))
            rows = iter(zip(ids, probs, strict=True))
        for name, (pixels, error) in zip(names, decoded, strict=True):
            if pixels is None:
                yield Reading(path=name, error=error)
            else:
                row_ids, row_probs = next(rows)
                yield _reading(name, row_ids, row_probs, self.charset)


def _is_zip(path: Path) -> bool:
    """A TorchScript archive (a zip file), as `clipocr export --format torchscript` writes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False
