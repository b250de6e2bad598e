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

Modes whose ``convert('RGB')`` loses the picture are converted here instead (issue 23), and only
those; every other image gets PARSeq's pixels unchanged:

* high bit depth (``I;16*``, ``I``, ``F``): PIL clips each value to 0..255, so a 16-bit grey
  word reads as a white page. They are *scaled* to 8 bits (see `_scaled_to_grey`).
* transparency (``RGBA``, ``LA``, ``PA``, a palette or grey/RGB image with a transparent colour):
  ``convert('RGB')`` drops alpha and shows whatever colour sits under the transparent pixels,
  often black under a black word. Non-opaque pixels are composited over white, or over black
  when the visible content is light, as a viewer would show them. A fully opaque image is
  converted exactly as before.
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


_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def _to_uint8(arr: np.ndarray, rule: str) -> np.ndarray:
    """High-bit-depth values → uint8 by scaling, not clipping. `rule`: ``"16bit"`` (the mode says
    16 bits: ÷ 257, so 65535 → 255), or ``"int"``/``"float"`` (the range is unknown: the smallest
    that holds the values — a float image within 0..1 is a unit image (× 255); within 0..255
    8-bit; within 0..65535 16-bit; anything else, negative values or 32-bit counts, is stretched
    from its minimum to its maximum). NaN and infinities become 0."""
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    arr = np.where(finite, arr, 0.0)
    lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
    if rule == "16bit" or (lo >= 0 and 255 < hi <= 65535):
        arr = arr / 257.0
    elif rule == "float" and lo >= 0 and hi <= 1.0:
        arr = arr * 255.0
    elif lo < 0 or hi > 255:
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _scaled_to_grey(img: Image.Image) -> Image.Image:
    """A high-bit-depth grey image (``I;16*``, ``I``, ``F``) → 8-bit ``L`` (see `_to_uint8`)."""
    rule = "16bit" if img.mode.startswith("I;16") else "float" if img.mode == "F" else "int"
    return Image.fromarray(_to_uint8(np.asarray(img), rule))


def _composited(img: Image.Image) -> Image.Image:
    """An image with transparency → RGB with its non-opaque pixels over a plain background:
    white, or black when the visible content is light (so a white word on a transparent page
    does not vanish). A fully opaque image gets PIL's own ``convert('RGB')``, bit for bit."""
    rgba = img.convert("RGBA")
    if rgba.getchannel("A").getextrema()[0] == 255:
        return img.convert("RGB")
    arr = np.asarray(rgba).astype(np.float32)
    rgb, alpha = arr[..., :3], arr[..., 3:] / 255.0
    weight = float(alpha.sum())
    lum = float((rgb.mean(-1, keepdims=True) * alpha).sum()) / weight if weight else 0.0
    background = 0.0 if lum >= 128 else 255.0
    out = rgb * alpha + background * (1.0 - alpha)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def rgb_or_grey(img: Image.Image) -> Image.Image:
    """`img` in mode ``RGB`` or ``L``, its picture kept (see the module note on the modes whose
    plain ``convert('RGB')`` loses it); raises ValueError for a mode PIL cannot convert."""
    if img.mode in ("RGB", "L") and "transparency" not in img.info:
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _scaled_to_grey(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _composited(img)
    return img.convert("RGB")


def decode_image(data: bytes, *, draft: bool = False) -> Image.Image:
    """Decode encoded image bytes into an RGB PIL image (raises on corrupt data).

    Full size by default; with `draft` (training only), a JPEG is decoded at the smallest scale
    of 1/2, 1/4 or 1/8 that keeps it at least 256×64, twice the 128×32 target."""
    img = rgb_or_grey(_open(data, draft))
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
    return image_uint8(_open(data, draft), out=out)


def image_uint8(img: Image.Image, *, out: np.ndarray | None = None) -> np.ndarray:
    """A decoded PIL image in any mode → resized uint8 pixels ``(3, 32, 128)`` (`decode_uint8`
    after the decode: what the Python API reads an in-memory image with)."""
    pixels = np.asarray(resize(rgb_or_grey(img)))  # (32, 128, 3), or (32, 128) for grey
    if out is None:
        out = np.empty((3, IMG_H, IMG_W), dtype=np.uint8)
    out[...] = pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels
    return out


def array_image(arr: np.ndarray) -> Image.Image:
    """A numpy image → PIL: ``(H, W)`` grey, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)``
    RGBA, channels last in RGB order (OpenCV's BGR must be flipped first). uint8 as is, bool as
    black/white, uint16 as 16-bit, other integers and floats scaled by their range as PIL's
    ``I`` and ``F`` modes are (`_to_uint8`; one scale for all channels). Raises ValueError for
    another shape or dtype."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(
            f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), not {arr.shape}"
        )
    if min(arr.shape[:2]) < 1:
        raise ValueError(f"an image array of shape {arr.shape} holds no pixel")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind not in "uif":
        raise ValueError(f"an image array of dtype {arr.dtype} is not a picture")
    elif arr.dtype != np.uint8:
        rule = "16bit" if arr.dtype == np.uint16 else "float" if arr.dtype.kind == "f" else "int"
        arr = _to_uint8(arr, rule)
    return Image.fromarray(np.ascontiguousarray(arr))


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
