"""Student-side augmentation: PARSeq's RandAugment variant (DESIGN §3).

timm's `rand_augment_ops` supplies the photometric and geometric ops (Sharpness removed: it fights
the blur op); three ops are added here as PARSeq adds them — Gaussian blur, Poisson noise and a
rotation that *expands* the canvas so word ends are not cut off (timm's Rotate crops). Unlike
PARSeq we do not patch timm's module-level op tables: the extra ops are plain callables handed
to `timm.data.auto_augment.RandAugment`.

Each sample is augmented under its own seed, so a replayed data stream (resume, cached views)
gets exactly the same pixels.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter
from timm.data import auto_augment

# Tuned by PARSeq for magnitude 5 (effective values are half of these).
HPARAMS = {
    "rotate_deg": 30,
    "shear_x_pct": 0.9,
    "shear_y_pct": 0.2,
    "translate_x_pct": 0.10,
    "translate_y_pct": 0.30,
}
_TIMM_OPS = [
    op
    for op in auto_augment._RAND_INCREASING_TRANSFORMS
    if op not in ("SharpnessIncreasing", "Rotate")
]
_LEVEL_DENOM = 10.0


def _bounded(level: float, img: Image.Image, max_dim_factor: float) -> int:
    """PARSeq's `_get_param`: limit a pixel-sized level by the image size."""
    return round(min(level, max(1.0, max_dim_factor * max(img.size))))


class _Op:
    """A RandAugment op applied with probability `prob` at a fixed magnitude (as timm's)."""

    def __init__(
        self, fn: Callable[[Image.Image, float], Image.Image], magnitude: float, max_arg: float
    ):
        self.fn, self.arg, self.prob = fn, max_arg * magnitude / _LEVEL_DENOM, 0.5

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.prob:
            return img
        return self.fn(img, self.arg)


def _gaussian_blur(img: Image.Image, radius: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(_bounded(radius, img, 0.02)))


def _poisson_noise(img: Image.Image, lam: float) -> Image.Image:
    lam = _bounded(lam, img, 0.2)
    arr = np.asarray(img).astype(np.int16)
    noise = np.random.poisson(lam, size=arr.shape) - lam
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))


def _rotate_expand(img: Image.Image, degrees: float) -> Image.Image:
    angle = degrees if random.random() < 0.5 else -degrees
    return img.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=(128, 128, 128))


class StudentAugment:
    """`num_ops` ops drawn without replacement at `magnitude` (PARSeq: 3 ops at magnitude 5)."""

    def __init__(self, magnitude: int = 5, num_ops: int = 3) -> None:
        ops: list[Callable] = list(
            auto_augment.rand_augment_ops(magnitude, hparams=HPARAMS, transforms=_TIMM_OPS)
        )
        ops += [
            _Op(_rotate_expand, magnitude, HPARAMS["rotate_deg"]),
            _Op(_gaussian_blur, magnitude, 4),
            _Op(_poisson_noise, magnitude, 40),
        ]
        weights = [1.0 / len(ops)] * len(ops)  # weighted choice ⇒ no op twice
        self._augment = auto_augment.RandAugment(ops, num_ops, weights)

    def __call__(self, img: Image.Image, seed: int) -> Image.Image:
        """Augment `img` under `seed`; the global RNG states are restored afterwards."""
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        try:
            return self._augment(img.convert("RGB"))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
