"""The training augmentation: PARSeq's RandAugment variant (DESIGN §3).

It lives on the pipeline floor, not in `train_student`, because two jobs apply it: the trainer to
the student's input, and the cache job to the images of cached teacher *views* (`views.py`,
DESIGN §5), which must be the very pixels the trainer later replays.

timm's `rand_augment_ops` supplies the photometric and geometric ops (Sharpness removed: it fights
the blur op); three ops are added here as PARSeq adds them — Gaussian blur, Poisson noise and a
rotation that *expands* the canvas so word ends are not cut off (timm's Rotate crops). Unlike
PARSeq we do not patch timm's module-level op tables: the extra ops are plain callables handed
to `timm.data.auto_augment.RandAugment`, and the shear/translate magnitudes PARSeq sets through
its patched level functions (`aa_overrides`) are set on our own op instances (issue 22).

Each sample is augmented under its own seed, so a replayed data stream (resume, cached views)
gets exactly the same pixels. `train_student/device_augment.py` draws the same ops on batched
tensors (same distribution, not the same draws).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from timm.data import auto_augment

# Tuned by PARSeq for magnitude 5 (effective values are half of these): the argument at magnitude
# 10 of the expanding rotation (degrees) and of the four geometric ops in `GEOMETRY_HPARAMS`.
HPARAMS = {
    "rotate_deg": 30,
    "shear_x_pct": 0.9,
    "shear_y_pct": 0.2,
    "translate_x_pct": 0.10,
    "translate_y_pct": 0.30,
}
TIMM_OPS = [
    op
    for op in auto_augment._RAND_INCREASING_TRANSFORMS
    if op not in ("SharpnessIncreasing", "Rotate")
]
# The added ops: (name, the argument at magnitude 10, randomly negated)
EXTRA_OPS = [("RotateExpand", HPARAMS["rotate_deg"], True), ("GaussianBlur", 4, False),
             ("PoissonNoise", 40, False)]  # fmt: skip
OP_NAMES = [*TIMM_OPS, *(name for name, _, _ in EXTRA_OPS)]
LEVEL_DENOM = auto_augment._LEVEL_DENOM
# The hparam that sets each of timm's geometric ops. PARSeq's `aa_overrides` makes timm read these
# keys; timm 1.x's own level functions read none of them (shear ±0.3·m/10 on both axes, translate
# ±hparams["translate_pct"]·m/10 = ±0.45·m/10 on both), so without this table the ops ran at
# ShearX ±0.15 / ShearY ±0.15 / TranslateX ±0.225 / TranslateY ±0.225 instead of PARSeq's ±0.45 /
# ±0.10 / ±0.05 / ±0.15 (shear factor; translation as a fraction of the image's side).
GEOMETRY_HPARAMS = {
    "ShearX": "shear_x_pct",
    "ShearY": "shear_y_pct",
    "TranslateXRel": "translate_x_pct",
    "TranslateYRel": "translate_y_pct",
}
FILL = (128, 128, 128)  # timm's fill (hparams without img_mean), used by the rotation too


def geometry_level(level: float, hparams: dict[str, Any], key: str) -> tuple[float]:
    """PARSeq's level function for the geometric ops, in timm's signature: ``level / 10 ×
    hparams[key]``, negated with probability 1/2 by timm's own `_randomly_negate` (one
    ``random.random()`` draw, as timm's level functions make)."""
    return (auto_augment._randomly_negate(level / LEVEL_DENOM * hparams[key]),)


def bounded(level: float, max_side: int, max_dim_factor: float) -> int:
    """PARSeq's `_get_param`: limit a pixel-sized level by the image's longer side."""
    return round(min(level, max(1.0, max_dim_factor * max_side)))


def blur_radius(level: float, max_side: int) -> int:
    return bounded(level, max_side, 0.02)


def noise_lambda(level: float, max_side: int) -> int:
    """PARSeq's Poisson λ: bounded by the longer side, then binned to an odd value (``| 1``)."""
    return bounded(level, max_side, 0.2) | 1


class _Op:
    """A RandAugment op applied with probability `prob` at a fixed magnitude (as timm's), its
    argument negated with probability 1/2 when `signed` (as timm's `_randomly_negate`)."""

    def __init__(
        self,
        name: str,
        fn: Callable[[Image.Image, float], Image.Image],
        magnitude: float,
        max_arg: float,
        signed: bool,
    ):
        self.name, self.fn, self.signed = name, fn, signed
        self.arg, self.prob = max_arg * magnitude / LEVEL_DENOM, 0.5

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.prob:
            return img
        arg = self.arg if not self.signed or random.random() < 0.5 else -self.arg
        return self.fn(img, arg)


def _gaussian_blur(img: Image.Image, radius: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(blur_radius(radius, max(img.size))))


def _poisson_noise(img: Image.Image, lam: float) -> Image.Image:
    """PARSeq's op, imgaug's `AdditivePoissonNoise(λ)`: per pixel ±Poisson(λ) (a random sign,
    not centred by −λ), the same value on every channel, clipped."""
    lam = noise_lambda(lam, max(img.size))
    arr = np.asarray(img).astype(np.int16)
    shape = (*arr.shape[:2], 1) if arr.ndim == 3 else arr.shape
    noise = np.random.poisson(lam, size=shape) * np.where(np.random.random(shape) < 0.5, -1, 1)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))


def _rotate_expand(img: Image.Image, degrees: float, bicubic: bool | None = None) -> Image.Image:
    """PARSeq's rotation (timm's `rotate` with ``expand=True``), so like timm's geometric ops it
    interpolates bilinear or bicubic at random (timm's own choice) unless `bicubic` is given."""
    if bicubic is None:
        resample = auto_augment._interpolation({"resample": auto_augment._RANDOM_INTERPOLATION})
    else:
        resample = Image.BICUBIC if bicubic else Image.BILINEAR
    return img.rotate(degrees, resample=resample, expand=True, fillcolor=FILL)


_EXTRA_FNS = {"RotateExpand": _rotate_expand, "GaussianBlur": _gaussian_blur,
              "PoissonNoise": _poisson_noise}  # fmt: skip


_rng_lock = threading.Lock()


def _new_lock_in_child() -> None:
    """A forked child starts with the lock free (its holder thread did not come along)."""
    global _rng_lock
    _rng_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


class StudentAugment:
    """`num_ops` ops drawn without replacement at `magnitude` (PARSeq: 3 ops at magnitude 5)."""

    def __init__(self, magnitude: int = 5, num_ops: int = 3) -> None:
        ops: list[Callable] = list(
            auto_augment.rand_augment_ops(magnitude, hparams=HPARAMS, transforms=TIMM_OPS)
        )
        for op in ops:  # this instance's level function, not timm's module table
            if op.name in GEOMETRY_HPARAMS:
                op.level_fn = partial(geometry_level, key=GEOMETRY_HPARAMS[op.name])
        ops += [_Op(n, _EXTRA_FNS[n], magnitude, arg, signed) for n, arg, signed in EXTRA_OPS]
        weights = [1.0 / len(ops)] * len(ops)  # weighted choice ⇒ no op twice
        self._augment = auto_augment.RandAugment(ops, num_ops, weights)

    def __call__(self, img: Image.Image, seed: int) -> Image.Image:
        """Augment `img` under `seed`; the global RNG states are restored afterwards.

        timm draws from the *global* `random` and `numpy.random` generators, so two threads
        augmenting at once (the cache job's dask worker threads) would draw from each other's
        seeded streams and make pixels no replay reproduces: one thread at a time, by a lock."""
        with _rng_lock:
            py_state, np_state = random.getstate(), np.random.get_state()
            random.seed(seed)
            np.random.seed(seed % (1 << 32))
            try:
                return self._augment(img.convert("RGB"))
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
