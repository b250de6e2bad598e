"""Pillow's image ops, as timm's RandAugment and `augment.py` call them, on batches of uint8
tensors (N, C, H, W) on any device (issue 14; `train_student/device_augment.py` draws which image
gets which).

Each op replays Pillow's arithmetic rather than a look-alike, so that a device-augmented image is
the host-augmented one: lookup tables built as `ImageOps` builds them, blends in float32 and
truncated as Blend.c, the RGB → L luma in its 16-bit fixed point, the box blurs of its
GaussianBlur with their 24-bit weights, affine transforms with its pixel-centre convention,
clamped taps, fill outside and its a = −1 bicubic (Geometry.c, float64 as there). Where torch
cannot follow Pillow's exact arithmetic (the antialiased resize after a rotation: float32 here,
fixed point there), the result differs by at most one grey level (tests/test_device_augment.py).

An op has one signature, `OpFn`, so the caller can dispatch groups of images uniformly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from clipocr.pipeline.augment import FILL

Tensor = torch.Tensor
# An op: (uint8 images (n, C, H, W), its argument per image (n,), bicubic per image (n,), the
# noise generator) → uint8 images of the same shape.
OpFn = Callable[[Tensor, Tensor, Tensor, torch.Generator], Tensor]


# -- photometric ops (PIL's lookup tables and blends, in integer / float32 arithmetic) ---------
def _lut(x: Tensor, lut: Tensor) -> Tensor:
    """Per image and channel lookup: `lut` is (n, C, 256)."""
    flat = x.flatten(2).long()
    return torch.gather(lut, 2, flat).to(torch.uint8).view_as(x)


def auto_contrast(x: Tensor) -> Tensor:
    """`ImageOps.autocontrast`: each channel stretched to 0..255 (float64, as PIL's Python)."""
    lo = x.amin((2, 3)).double()[..., None]
    hi = x.amax((2, 3)).double()[..., None]
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)  # `255.0 / t` is t⁻¹·255
    offset = -lo * scale
    ramp = torch.arange(256, device=x.device, dtype=torch.float64)
    lut = (ramp * scale + offset).trunc().clamp(0, 255)
    lut = torch.where(hi > lo, lut, ramp)
    return _lut(x, lut.long())


def equalize(x: Tensor) -> Tensor:
    """`ImageOps.equalize`: per channel, the histogram's cumulative count in steps of
    (pixels − the last bin's count) // 255."""
    n, c = x.shape[:2]
    flat = x.flatten(2).long()
    hist = torch.zeros(n, c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(2, flat, torch.ones_like(flat))
    last = 255 - (hist.flip(2) > 0).long().argmax(2, keepdim=True)
    step = (flat.shape[2] - hist.gather(2, last)) // 255
    below = hist.cumsum(2) - hist  # pixels in the bins below each value
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    keep = ((hist > 0).sum(2, keepdim=True) <= 1) | (step == 0)
    ramp = torch.arange(256, device=x.device).expand_as(lut)
    return _lut(x, torch.where(keep, ramp, lut))


def _grey(x: Tensor) -> Tensor:
    """PIL's RGB → L (ITU-R 601-2 luma in 16-bit fixed point), shape (n, 1, H, W) int32."""
    r, g, b = x.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)[:, None]


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """`Image.blend(degenerate, x, factor)`: float32, clipped, truncated (PIL's Blend.c)."""
    f = factor.to(x.device, torch.float32).view(-1, 1, 1, 1)
    d = degenerate.float()
    return (d + f * (x.float() - d)).clamp(0, 255).trunc().to(torch.uint8)


def color(x: Tensor, factor: Tensor, *_: object) -> Tensor:
    return _blend(_grey(x).expand_as(x), x, factor)


def contrast(x: Tensor, factor: Tensor, *_: object) -> Tensor:
    """Blend with the grey image's mean level, rounded as PIL's ``int(mean + 0.5)``."""
    grey = _grey(x).flatten(1).long()
    pixels = grey.shape[1]
    mean = (2 * grey.sum(1) + pixels) // (2 * pixels)
    return _blend(mean.view(-1, 1, 1, 1).expand_as(x), x, factor)


def brightness(x: Tensor, factor: Tensor, *_: object) -> Tensor:
    return _blend(torch.zeros_like(x), x, factor)


def posterize(x: Tensor, *_: object, bits: int) -> Tensor:
    return x & (0xFF << (8 - bits) & 0xFF) if bits < 8 else x


def solarize(x: Tensor, *_: object, thresh: int) -> Tensor:
    return torch.where(x >= thresh, 255 - x, x)


def solarize_add(x: Tensor, *_: object, add: int, thresh: int = 128) -> Tensor:
    return torch.where(x < thresh, (x.int() + add).clamp(max=255).to(torch.uint8), x)


def pointwise(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda x, *_: fn(x)


# -- blur and noise ----------------------------------------------------------------------------
def _box_radius(radius: float, passes: int) -> float:
    """Pillow's `_gaussian_blur_radius` (float32, as its C): the extended box radius whose
    `passes` box blurs approximate a Gaussian of this radius (its sigma)."""
    f = np.float32
    sigma2 = f(radius) * f(radius) / f(passes)
    big_l = f(math.sqrt(12.0 * float(sigma2) + 1.0))
    small_l = f(math.floor((float(big_l) - 1.0) / 2.0))
    a = (f(2) * small_l + f(1)) * (small_l * (small_l + f(1)) - f(3) * sigma2)
    a /= f(6) * (sigma2 - (small_l + f(1)) * (small_l + f(1)))
    return float(small_l + a)


def _box_pass(x: Tensor, radius: float, dim: int) -> Tensor:
    """One of Pillow's box-blur passes along `dim` (int64, replicated edges, its 24-bit fixed
    point weights and rounding): the 2r+1 inner taps weigh ww, the two outer fw."""
    r = int(radius)
    ww = int(np.float32(1 << 24) / (np.float32(radius) * np.float32(2) + np.float32(1)))
    fw = ((1 << 24) - (r * 2 + 1) * ww) // 2
    size = x.shape[dim]
    index = torch.arange(-r - 1, size + r + 1, device=x.device).clamp(0, size - 1)
    padded = x.index_select(dim, index)
    inner = sum(padded.narrow(dim, k, size) for k in range(1, 2 * r + 2))
    outer = padded.narrow(dim, 0, size) + padded.narrow(dim, 2 * r + 2, size)
    return (inner * ww + outer * fw + (1 << 23)) >> 24


def gaussian_blur(x: Tensor, *_: object, radius: int, passes: int = 3) -> Tensor:
    """`ImageFilter.GaussianBlur(radius)`: Pillow's three box blurs per direction, rows first."""
    box = _box_radius(radius, passes)
    out = x.long()
    for dim in (3, 2):
        for _ in range(passes):
            out = _box_pass(out, box, dim)
    return out.to(torch.uint8)


def poisson_noise(x: Tensor, _arg: Tensor, _bic: Tensor, gen: torch.Generator, lam: int) -> Tensor:
    """Add ±Poisson(λ) per pixel (a random sign; one value for all channels), clipped: the
    host op's draw (imgaug's `AdditivePoissonNoise`, as PARSeq uses it)."""
    n, _, h, w = x.shape
    rate = torch.full((n, 1, h, w), float(lam), device=x.device)
    magnitude = torch.poisson(rate, generator=gen)
    negative = torch.rand((n, 1, h, w), generator=gen, device=x.device) < 0.5
    noise = torch.where(negative, -magnitude, magnitude)
    return (x.float() + noise).clamp(0, 255).to(torch.uint8)


# -- geometric ops (Pillow's affine transform: pixel centres, clamped taps, fill outside) ------
def _interp(v: list[Tensor], d: Tensor) -> Tensor:
    """Pillow's transform interpolation between taps `v` (offsets 0, 1 or −1 … 2) at fraction
    `d`, in its difference form (exact on flat regions): bicubic is the cubic convolution with
    a = −1 (not resize's −0.5)."""
    if len(v) == 1:  # an exact pixel position along this axis
        return v[0]
    if len(v) == 2:
        return v[0] + (v[1] - v[0]) * d
    v1, v2, v3, v4 = v
    return v2 + d * ((v3 - v1) + d * ((2 * (v1 - v2) + v3 - v4) + d * (v2 - v1 - v3 + v4)))


def _affine_one_mode(x: Tensor, coeffs: Tensor, size: tuple[int, int], cubic: bool) -> Tensor:
    """`affine` for images that all use one resample (`cubic`), channels last inside."""
    n, c, h, w = x.shape
    out_h, out_w = size
    dev = x.device
    k = coeffs.to(dev, torch.float64).view(n, 6, 1)
    ys = torch.arange(out_h, device=dev, dtype=torch.float64).repeat_interleave(out_w) + 0.5
    xs = torch.arange(out_w, device=dev, dtype=torch.float64).repeat(out_h) + 0.5
    xin = k[:, 0] * xs + k[:, 1] * ys + k[:, 2]  # (n, out_h·out_w)
    yin = k[:, 3] * xs + k[:, 4] * ys + k[:, 5]
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    x0, y0 = (xin - 0.5).floor(), (yin - 0.5).floor()
    dx, dy = (xin - 0.5 - x0)[..., None], (yin - 0.5 - y0)[..., None]
    x0, y0 = x0.long(), y0.long()
    pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, c).double()  # one row per pixel
    first = (torch.arange(n, device=dev) * (h * w))[:, None]
    taps = (-1, 0, 1, 2) if cubic else (0, 1)
    # Along an axis the map leaves on whole pixels (shear and translate: one of the two), the
    # fraction is 0 and the middle tap is the value: one tap instead of four.
    whole_x, whole_y = (
        bool(((coeffs[:, i] == 1) & (coeffs[:, j] == 0) & (coeffs[:, t] % 1 == 0)).all())
        for i, j, t in ((0, 1, 2), (4, 3, 5))
    )
    cols = [(x0 + o).clamp(0, w - 1) for o in ((0,) if whole_x else taps)]
    rows = []
    for o in (0,) if whole_y else taps:
        row = (y0 + o).clamp(0, h - 1) * w + first
        # index_select, not pixels[index]: the same rows, faster on the CPU
        values = [pixels.index_select(0, (row + col).view(-1)).view(n, -1, c) for col in cols]
        rows.append(_interp(values, dx))
    out = _interp(rows, dy).clamp(0, 255).trunc()
    fill = torch.tensor(FILL[:c], device=dev, dtype=out.dtype)
    out = torch.where(inside[..., None], out, fill).to(torch.uint8)
    return out.view(n, out_h, out_w, c).permute(0, 3, 1, 2)


def affine(x: Tensor, coeffs: Tensor, size: tuple[int, int], bicubic: Tensor) -> Tensor:
    """`img.transform(size, AFFINE, coeffs, resample, fillcolor=FILL)` per image; `bicubic`
    (a CPU bool per image) chooses the resample, else bilinear.

    `coeffs` (n, 6) maps an output pixel centre (X, Y) to the input point (aX + bY + c,
    dX + eY + f); points outside the input are FILL, taps past its edge repeat the edge pixel,
    rows are interpolated before columns in float64 and the result is clipped and truncated to
    uint8, all as Pillow's Geometry.c, so the pixels are Pillow's (tested).
    """
    out = torch.empty((len(x), x.shape[1], *size), dtype=torch.uint8, device=x.device)
    for cubic in (False, True):
        rows = (bicubic == cubic).nonzero().squeeze(1)
        if len(rows):
            index = rows.to(x.device)
            out[index] = _affine_one_mode(x[index], coeffs[rows], size, cubic)
    return out


def shear_x(x: Tensor, factor: Tensor, bicubic: Tensor, *_: object) -> Tensor:
    one, zero = torch.ones_like(factor), torch.zeros_like(factor)
    coeffs = torch.stack([one, factor, zero, zero, one, zero], 1)
    return affine(x, coeffs, x.shape[2:], bicubic)


def shear_y(x: Tensor, factor: Tensor, bicubic: Tensor, *_: object) -> Tensor:
    one, zero = torch.ones_like(factor), torch.zeros_like(factor)
    coeffs = torch.stack([one, zero, zero, factor, one, zero], 1)
    return affine(x, coeffs, x.shape[2:], bicubic)


def translate_x(x: Tensor, pct: Tensor, bicubic: Tensor, *_: object) -> Tensor:
    one, zero = torch.ones_like(pct), torch.zeros_like(pct)
    coeffs = torch.stack([one, zero, pct * x.shape[3], zero, one, zero], 1)
    return affine(x, coeffs, x.shape[2:], bicubic)


def translate_y(x: Tensor, pct: Tensor, bicubic: Tensor, *_: object) -> Tensor:
    one, zero = torch.ones_like(pct), torch.zeros_like(pct)
    coeffs = torch.stack([one, zero, zero, zero, one, pct * x.shape[2]], 1)
    return affine(x, coeffs, x.shape[2:], bicubic)


def rotation(width: int, height: int, degrees: float) -> tuple[list[float], tuple[int, int]]:
    """`Image.rotate(degrees, expand=True)`'s inverse matrix and canvas (width, height), as
    Pillow computes them (the canvas depends on |degrees| only)."""
    angle = -math.radians(degrees % 360.0)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    m = [cos, sin, 0.0, -sin, cos, 0.0]

    def apply(px: float, py: float) -> tuple[float, float]:
        return m[0] * px + m[1] * py + m[2], m[3] * px + m[4] * py + m[5]

    cx, cy = width / 2, height / 2
    m[2], m[5] = apply(-cx, -cy)
    m[2] += cx
    m[5] += cy
    corners = [apply(px, py) for px, py in ((0, 0), (width, 0), (width, height), (0, height))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    new_w = math.ceil(max(xs)) - math.floor(min(xs))
    new_h = math.ceil(max(ys)) - math.floor(min(ys))
    m[2], m[5] = apply(-(new_w - width) / 2.0, -(new_h - height) / 2.0)
    return m, (new_w, new_h)


def rotate_expand(x: Tensor, degrees: Tensor, bicubic: Tensor, *_: object) -> Tensor:
    """Rotation onto the expanded canvas (bicubic or bilinear per image, as `affine`), then back
    to the batch's size as the pipeline's `preprocess.resize` does it: torch's antialiased
    bicubic (a = −0.5, as Pillow's resize), one axis at a time, each rounded, in the order that
    reproduces Pillow 13 here (vertical first)."""
    h, w = x.shape[2:]
    coeffs = [rotation(w, h, float(d))[0] for d in degrees.tolist()]
    _, (new_w, new_h) = rotation(w, h, float(degrees[0]))
    canvas = affine(x, torch.tensor(coeffs, dtype=torch.float64), (new_h, new_w), bicubic)
    out = canvas.float()
    for step in ((h, new_w), (h, w)):  # one pass per axis, each rounded to uint8, as Pillow
        out = F.interpolate(out, step, mode="bicubic", antialias=True).round().clamp(0, 255)
    return out.to(torch.uint8)
