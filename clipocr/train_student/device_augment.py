"""PARSeq's RandAugment variant on a batch of uint8 tensors, on the batch's own device (issue 14).

Why: the host variant (`pipeline/augment.py`, PIL, one image at a time) costs a DataLoader worker
most of its time per sample, so a GPU trainer needs many host cores just to augment. Here the
batch is augmented after it reached the device, with batched tensor ops.

Same distribution as `StudentAugment`, drawn per *sample* (a per-batch draw, as torchvision's
RandAugment makes, would give every image of a batch the same ops): each image gets `num_ops`
distinct ops in a uniformly random order, each applied with probability 1/2, signed arguments
negated with probability 1/2 and the geometric ops' interpolation drawn bilinear/bicubic 1/2 — as
timm's `RandAugment`/`AugmentOp` draw them. The ops are applied layer by layer, grouped by op, so
each op runs once per layer on the images that drew it. Every op (`pipeline/pillow_ops.py`)
reproduces its PIL counterpart on the same image, exactly or within one grey level (tested); the
pipelines differ *by construction* in one respect: the host augments the decoded
image at its own size and then resizes to 32×128, this module augments the resized image. For a
crop already near 32×128 (MJSynth, most benchmarks) that is the same; for a large crop, pixel-
sized arguments (blur radius, noise) act at a coarser scale here, and shear/rotation act on the
4:1 canvas rather than the crop's aspect.

Randomness comes from private generators seeded by the caller (the plan on the CPU, the Poisson
noise on the device), so a replayed batch gets the same pixels and the global RNGs (dropout) are
untouched.

It does **not** replay cached teacher views (DESIGN §5, `pipeline/views.py`): the same seed draws
other ops here than timm's `RandAugment` draws on the host (torch generators, not Python's and
numpy's), the Poisson noise comes from torch, and the resize after a rotation may differ by one
grey level. A view is the host op sequence's pixels, so views replay on the host path only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from clipocr.pipeline import pillow_ops as po
from clipocr.pipeline.augment import (
    EXTRA_OPS,
    GEOMETRY_HPARAMS,
    HPARAMS,
    LEVEL_DENOM,
    OP_NAMES,
    blur_radius,
    noise_lambda,
)
from clipocr.pipeline.pillow_ops import OpFn, Tensor


@dataclass(frozen=True)
class DeviceOp:
    """One op of the variant: the host op's `name`, its argument for a draw that is not /
    is negated (`values`; empty for ops without one), and the batched implementation."""

    name: str
    values: tuple[float, float] | tuple[()]
    fn: OpFn


def _signed(level: float) -> tuple[float, float]:
    return (level, -level)


def _enhance(level: float) -> tuple[float, float]:
    """timm's `_enhance_increasing_level_to_arg`: 1 ± level, at least 0.1."""
    return (max(0.1, 1.0 + level), max(0.1, 1.0 - level))


def device_ops(magnitude: int, size: tuple[int, int]) -> list[DeviceOp]:
    """The variant's ops in `StudentAugment`'s order, with timm's level formulas at
    `magnitude`, PARSeq's for shear and translate (`GEOMETRY_HPARAMS`), and the blur/noise
    bounds for images of `size`."""
    m = magnitude / LEVEL_DENOM
    bits, thresh, add = 4 - int(m * 4), 256 - min(256, int(m * 256)), min(128, int(m * 110))
    extra = {name: top * m for name, top, _ in EXTRA_OPS}
    radius = blur_radius(extra["GaussianBlur"], max(size))
    lam = noise_lambda(extra["PoissonNoise"], max(size))
    geo = {name: _signed(m * HPARAMS[key]) for name, key in GEOMETRY_HPARAMS.items()}
    ops = [
        DeviceOp("AutoContrast", (), po.pointwise(po.auto_contrast)),
        DeviceOp("Equalize", (), po.pointwise(po.equalize)),
        DeviceOp("Invert", (), po.pointwise(lambda x: 255 - x)),
        DeviceOp("PosterizeIncreasing", (bits, bits), partial(po.posterize, bits=bits)),
        DeviceOp("SolarizeIncreasing", (thresh, thresh), partial(po.solarize, thresh=thresh)),
        DeviceOp("SolarizeAdd", (add, add), partial(po.solarize_add, add=add)),
        DeviceOp("ColorIncreasing", _enhance(m * 0.9), po.color),
        DeviceOp("ContrastIncreasing", _enhance(m * 0.9), po.contrast),
        DeviceOp("BrightnessIncreasing", _enhance(m * 0.9), po.brightness),
        DeviceOp("ShearX", geo["ShearX"], po.shear_x),
        DeviceOp("ShearY", geo["ShearY"], po.shear_y),
        DeviceOp("TranslateXRel", geo["TranslateXRel"], po.translate_x),
        DeviceOp("TranslateYRel", geo["TranslateYRel"], po.translate_y),
        DeviceOp("RotateExpand", _signed(extra["RotateExpand"]), po.rotate_expand),
        DeviceOp(
            "GaussianBlur", (extra["GaussianBlur"],) * 2, partial(po.gaussian_blur, radius=radius)
        ),
        DeviceOp("PoissonNoise", (extra["PoissonNoise"],) * 2, partial(po.poisson_noise, lam=lam)),
    ]
    assert [op.name for op in ops] == OP_NAMES  # the host's op list, in its order
    return ops


@dataclass
class AugmentPlan:
    """What each image of a batch drew, (B, num_ops) each, in application order: the op (index
    into `device_ops`), whether it applies (timm's prob 0.5), whether its argument is negated,
    and whether a geometric op interpolates bicubic (else bilinear)."""

    ops: Tensor
    applied: Tensor
    negated: Tensor
    bicubic: Tensor


class DeviceAugment:
    """`StudentAugment`'s distribution on a uint8 batch (B, 3, H, W), on the batch's device."""

    def __init__(self, magnitude: int = 5, num_ops: int = 3) -> None:
        self.magnitude, self.num_ops = magnitude, num_ops
        self._ops: dict[tuple[int, int], list[DeviceOp]] = {}

    def ops(self, size: tuple[int, int]) -> list[DeviceOp]:
        if size not in self._ops:
            self._ops[size] = device_ops(self.magnitude, size)
        return self._ops[size]

    def plan(self, batch: int, gen: torch.Generator) -> AugmentPlan:
        """Per image: `num_ops` distinct ops in random order (the first of a random permutation,
        as numpy's choice without replacement), then the three coin flips."""
        shape = (batch, self.num_ops)
        ops = torch.rand(batch, len(OP_NAMES), generator=gen).argsort(1)[:, : self.num_ops]
        flips = [torch.rand(shape, generator=gen) < 0.5 for _ in range(3)]
        return AugmentPlan(ops, *flips)

    def apply(self, images: Tensor, plan: AugmentPlan, gen: torch.Generator) -> Tensor:
        """Apply `plan` layer by layer; within a layer, each op once on the images that drew
        it (their indices are known on the host, so nothing waits for the device)."""
        ops = self.ops(tuple(images.shape[2:]))
        out = images.clone()
        for layer in range(self.num_ops):
            chosen = torch.where(plan.applied[:, layer], plan.ops[:, layer], -1)
            for k in chosen[chosen >= 0].unique().tolist():
                rows = (chosen == k).nonzero().squeeze(1)
                op = ops[k]
                negated = plan.negated[rows, layer].long()
                arg = torch.tensor(op.values or (0.0, 0.0), dtype=torch.float64)[negated]
                index = rows.to(out.device, non_blocking=True)
                out[index] = op.fn(out[index], arg, plan.bicubic[rows, layer], gen)
        return out

    def __call__(self, images: Tensor, seed: int) -> Tensor:
        """Augment `images` (uint8, any device) under `seed`: a pure function of both."""
        plan = self.plan(len(images), torch.Generator().manual_seed(seed))
        noise = torch.Generator(device=images.device).manual_seed(seed)
        return self.apply(images, plan, noise)
