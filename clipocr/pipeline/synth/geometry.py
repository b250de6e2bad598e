"""Where each ink pixel lands: projective distortion, curved baselines and elastic wobble in one
resampling (DESIGN §3; MJSynth's projective distortion, SynthTIGER's curved text and elastic
distortion).

The word's mask is mapped forward as ``out = H · (x, y + bend(x))``: a parabolic bend of the
baseline (arched and sagging signs, bottle labels), then a homography (stretch, shear, rotation,
corner jitter, scale to the output). PIL resamples the inverse map; a straight word uses PIL's
PERSPECTIVE transform, a bent or wobbly one a MESH of small quads whose corners are the exact
inverse map plus smooth random offsets (the elastic part). One resampling per mask keeps the ink
sharp and costs about what the straight warp costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from clipocr.pipeline.synth.raster import perspective_coeffs

# px of output per mesh cell: small enough that bilinear cells look projective and a bend
# smooth; large enough that PIL's per-cell overhead (a Python call each) stays small.
MESH_CELL = 16


@dataclass(frozen=True)
class Distortion:
    """One sample's draw of the geometric ranges (all relative to the mask's height)."""

    stretch: float  # log horizontal stretch
    shear: float
    rotate_deg: float
    corners: np.ndarray  # (4, 2) corner jitter
    bend: float  # baseline sag at the word's ends (negative: arched)
    elastic: float  # std of the smooth random offsets


def draw_distortion(
    rng: np.random.Generator,
    stretch: float,
    shear: float,
    rotate_deg: float,
    perspective: float,
    p_curve: float,
    curve: float,
    p_elastic: float,
    elastic: float,
) -> Distortion:
    """Draw one sample's distortion from the style's maximum magnitudes."""
    return Distortion(
        stretch=float(rng.uniform(-stretch, stretch)),
        shear=float(rng.uniform(-shear, shear)),
        rotate_deg=float(rng.uniform(-rotate_deg, rotate_deg)),
        corners=rng.uniform(-perspective, perspective, size=(4, 2)),
        bend=float(rng.uniform(-curve, curve)) if rng.random() < p_curve else 0.0,
        elastic=float(rng.uniform(0.3, 1.0) * elastic) if rng.random() < p_elastic else 0.0,
    )


def warp(
    masks: list[Image.Image],
    dist: Distortion,
    ink_h: float,
    margins: np.ndarray,
    rng: np.random.Generator,
) -> list[Image.Image]:
    """`masks` (same size) distorted by `dist`, the whole word `ink_h` px high with `margins`
    (left, top, right, bottom; fractions of `ink_h`) around it."""
    w, h = masks[0].size
    sag = abs(dist.bend) * h
    hb = h + sag  # the bent word fits in a box this high
    src = np.array([[0, 0], [w, 0], [w, hb], [0, hb]], dtype=np.float64)
    quad = src * [np.exp(dist.stretch), 1.0]
    quad[:, 0] += dist.shear * (hb - quad[:, 1])
    theta = np.deg2rad(dist.rotate_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    quad = (quad - quad.mean(0)) @ rot.T
    quad += dist.corners * hb
    quad -= quad.min(0)
    span = quad.max(0)
    scale = ink_h / span[1]
    quad = quad * scale + [margins[0] * ink_h, margins[1] * ink_h]
    out_w = max(8, int(np.ceil(span[0] * scale + (margins[0] + margins[2]) * ink_h)))
    out_h = max(4, int(np.ceil(ink_h * (1 + margins[1] + margins[3]))))
    coeffs = perspective_coeffs(quad, src)
    if dist.bend == 0.0 and dist.elastic == 0.0:
        return [
            m.transform((out_w, out_h), Image.Transform.PERSPECTIVE, coeffs, Image.BILINEAR)
            for m in masks
        ]
    mesh = _mesh(coeffs, (out_w, out_h), w, h, dist, rng)
    return [m.transform((out_w, out_h), Image.Transform.MESH, mesh, Image.BILINEAR) for m in masks]


def _mesh(
    coeffs: tuple[float, ...],
    size: tuple[int, int],
    w: int,
    h: int,
    dist: Distortion,
    rng: np.random.Generator,
) -> list[tuple[tuple[int, int, int, int], tuple[float, ...]]]:
    """PIL MESH data: for each output cell, the source quad its corners map back to."""
    out_w, out_h = size
    nx, ny = max(2, -(-out_w // MESH_CELL)), max(2, -(-out_h // MESH_CELL))
    xs = np.linspace(0, out_w, nx + 1)
    ys = np.linspace(0, out_h, ny + 1)
    gx, gy = np.meshgrid(xs, ys)
    a, b, c, d, e, f, g, hh = coeffs
    den = g * gx + hh * gy + 1.0
    sx = (a * gx + b * gy + c) / den  # in the bent box
    sy = (d * gx + e * gy + f) / den
    # Undo the bend: forward, bend > 0 lowers the ends by `sag` (an arch), bend < 0 the middle.
    t = (2 * sx / w - 1) ** 2
    sag = abs(dist.bend) * h
    sy = sy - (sag * t if dist.bend > 0 else sag * (1 - t))
    if dist.elastic:
        # Offsets drawn on a coarse grid and spread bilinearly over the fine one: smooth.
        cy, cx = 3, max(3, int(np.ceil(w / h * 1.5)))
        coarse = rng.normal(0, dist.elastic * h, size=(2, cy, cx)).astype(np.float32)
        for k, arr in enumerate((sx, sy)):
            img = Image.fromarray(coarse[k]).resize((nx + 1, ny + 1), Image.BILINEAR)
            arr += np.asarray(img, np.float64)
    cells = []
    for j in range(ny):
        y0, y1 = int(round(ys[j])), int(round(ys[j + 1]))
        for i in range(nx):
            x0, x1 = int(round(xs[i])), int(round(xs[i + 1]))
            cells.append(
                (
                    (x0, y0, x1, y1),
                    (
                        sx[j, i], sy[j, i],  # upper left
                        sx[j + 1, i], sy[j + 1, i],  # lower left
                        sx[j + 1, i + 1], sy[j + 1, i + 1],  # lower right
                        sx[j, i + 1], sy[j, i + 1],  # upper right
                    ),
                )
            )  # fmt: skip
    return cells
