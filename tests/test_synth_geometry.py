"""Geometry: the warp keeps the ink, fits the asked height, and bends a bent baseline."""

from __future__ import annotations

import numpy as np
from PIL import Image

from clipocr.pipeline.synth.geometry import Distortion, warp

BAR = Image.new("L", (200, 20), 0)
BAR.paste(255, (0, 8, 200, 12))  # a horizontal stroke: a baseline to bend


def _dist(**kw) -> Distortion:
    base = dict(stretch=0.0, shear=0.0, rotate_deg=0.0, corners=np.zeros((4, 2)), bend=0.0)
    return Distortion(**{**base, "elastic": 0.0, **kw})


def _row_of_ink(img: Image.Image, x: int) -> float:
    col = np.asarray(img, float)[:, x]
    return float((col * np.arange(len(col))).sum() / max(col.sum(), 1e-6))


def test_straight_warp_scales_to_the_ink_height_with_margins():
    margins = np.array([0.5, 0.25, 0.5, 0.25])
    (out,) = warp([BAR], _dist(), 20.0, margins, np.random.default_rng(0))
    assert out.height == 30 and out.width == 200 + 20
    assert np.asarray(out)[:5].max() == 0  # the top margin is empty


def test_bend_moves_the_middle_against_the_ends():
    rng = np.random.default_rng(0)
    (arch,) = warp([BAR], _dist(bend=0.5), 30.0, np.zeros(4), rng)
    (sag,) = warp([BAR], _dist(bend=-0.5), 30.0, np.zeros(4), rng)
    w = arch.width
    assert _row_of_ink(arch, w // 2) < _row_of_ink(arch, 3) - 3  # ends low: an arch
    assert _row_of_ink(sag, w // 2) > _row_of_ink(sag, 3) + 3
    ink = np.asarray(BAR, float).sum() / BAR.width / BAR.height
    assert np.asarray(arch, float).mean() > 0.5 * ink * 0.15  # the stroke survives


def test_elastic_warp_depends_on_the_generator_only():
    masks = [BAR, BAR.point(lambda v: v // 2)]
    a = warp(masks, _dist(elastic=0.05), 24.0, np.zeros(4), np.random.default_rng(5))
    b = warp(masks, _dist(elastic=0.05), 24.0, np.zeros(4), np.random.default_rng(5))
    assert [m.tobytes() for m in a] == [m.tobytes() for m in b] and a[0].size == a[1].size
