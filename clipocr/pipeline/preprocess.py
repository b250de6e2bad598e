"""Image decoding and the one deterministic resize that feeds teacher, student and evaluator.

Images stay uint8 ``(3, 32, 128)`` until they reach the device: 4× fewer bytes through DataLoader
queues and pinned copies than float32, and each consumer applies its own normalisation there
(student/evaluator: mean = std = 0.5 as PARSeq; teacher: CLIP's own mean/std).

Two decodes, chosen by the caller. The default is PARSeq's test loader exactly
(``Image.open(buf).convert('RGB')``, then torchvision's ``Resize(BICUBIC)``, which on a PIL image
is ``img.resize((128, 32), BICUBIC)``): evaluation must see the reference protocol's pixels
(DESIGN §7), and a peer recognizer the crop as stored. ``draft=True`` is the training-speed path
(teacher cache and student): libjpeg decodes a large JPEG at a reduced scale, several times
cheaper, whose pixels after the resize differ a little from the full decode's.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

IMG_H, IMG_W = 32, 128
STUDENT_MEAN = (0.5, 0.5, 0.5)
STUDENT_STD = (0.5, 0.5, 0.5)


def _open(data: bytes, draft: bool) -> Image.Image:
    """Decode `data` in its stored mode (see `decode_image` for `draft`)."""
    img = Image.open(io.BytesIO(data))
    if draft and img.format == "JPEG":
        img.draft("RGB", (IMG_W * 2, IMG_H * 2))
    img.load()
    return img


def decode_image(data: bytes, *, draft: bool = False) -> Image.Image:
    """Decode encoded image bytes into an RGB PIL image (raises on corrupt data).

    Full size by default; with `draft` (training only), a JPEG is decoded at the smallest scale
    of 1/2, 1/4 or 1/8 that keeps it at least 256×64, twice the 128×32 target."""
    img = _open(data, draft)
    return img if img.mode == "RGB" else img.convert("RGB")  # convert would copy an RGB image


def resize(img: Image.Image) -> Image.Image:
    """The fixed 32×128 bicubic resize (aspect ratio not kept, as PARSeq and CLIP-OCR do)."""
    if img.size == (IMG_W, IMG_H):
        return img
    return img.resize((IMG_W, IMG_H), Image.BICUBIC)


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image → uint8 tensor ``(3, H, W)``."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def decode_uint8(data: bytes, *, draft: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Encoded bytes → resized uint8 pixels ``(3, 32, 128)``, written into `out` if given (a
    decode worker's slot of a shared batch buffer), else a new array.

    The same pixels as `decode_image` → `resize`, bit for bit, with less work: one bicubic resize
    straight from the decoded size, no RGB copy of an RGB image, a grey image resized as one
    plane and then repeated (the resize treats each plane alike, so the result is identical),
    and one copy into the channel-first result."""
    img = _open(data, draft)
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    pixels = np.asarray(resize(img))  # (32, 128, 3), or (32, 128) for grey
    if out is None:
        out = np.empty((3, IMG_H, IMG_W), dtype=np.uint8)
    out[...] = pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels
    return out


def load_uint8(data: bytes, *, draft: bool = False) -> torch.Tensor:
    """Encoded bytes → resized uint8 tensor ``(3, 32, 128)``: the shared input of every job
    (`draft`: the training-speed decode, see `decode_image`)."""
    return torch.from_numpy(decode_uint8(data, draft=draft))


def normalize(
    images: torch.Tensor,
    mean: tuple[float, ...] = STUDENT_MEAN,
    std: tuple[float, ...] = STUDENT_STD,
) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` (any device) → float normalised with `mean`/`std` in [0, 1] units."""
    x = images.float().div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
