"""Renderer primitives: glyph masks, dilation, the perspective solve and the colour tables."""

from __future__ import annotations

import numpy as np
import pytest

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.synth.fonts import discover_faces
from clipocr.pipeline.synth.raster import (
    contrasting_color,
    dilate,
    glyphs_for,
    luma_of,
    palette,
    perspective_coeffs,
)


@pytest.fixture(scope="module")
def glyphs():
    faces = discover_faces(Charset.from_name("36").chars)
    face = next(f for f in faces if f.name == "DejaVuSans.ttf")
    return glyphs_for(face)


def test_glyph_mask_is_cropped_to_the_ink_plus_the_pad(glyphs):
    mask = np.asarray(glyphs.draw("ab", pad=3))
    assert mask[:3].max() == 0 and mask[-3:].max() == 0
    assert mask[:, :3].max() == 0 and mask[:, -3:].max() == 0
    assert mask[3].max() > 0 and mask[-4].max() > 0  # ink from the ascender to the baseline
    # Horizontally FreeType's boxes hold the side bearings too: a few blank columns at most.
    cols = np.flatnonzero(mask.max(axis=0))
    assert cols[0] - 3 <= 3 and mask.shape[1] - 4 - cols[-1] <= 3
    assert glyphs.draw("abab", pad=3).width > 1.8 * (mask.shape[1] - 6)


def test_text_without_ink_is_a_blank_square(glyphs):
    blank = glyphs.draw("", pad=2)
    assert blank.size == (5, 5) and blank.getbbox() is None


@pytest.mark.parametrize("radius", [1, 2])
def test_dilate_grows_a_point_into_a_square(radius):
    mask = np.zeros((9, 9), np.uint8)
    mask[4, 4] = 200
    out = dilate(mask, radius)
    expected = np.zeros_like(mask)
    expected[4 - radius : 5 + radius, 4 - radius : 5 + radius] = 200
    np.testing.assert_array_equal(out, expected)


def test_perspective_coeffs_map_output_points_back_to_input_points():
    src = np.array([[0, 0], [40, 0], [40, 10], [0, 10]], dtype=np.float64)
    assert np.allclose(perspective_coeffs(src, src), [1, 0, 0, 0, 1, 0, 0, 0])
    a, b, c, d, e, f, g, h = perspective_coeffs(src + [5, 2], src)
    for (x, y), (u, v) in zip(src + [5, 2], src, strict=True):
        w = g * x + h * y + 1
        assert np.isclose((a * x + b * y + c) / w, u) and np.isclose((d * x + e * y + f) / w, v)


def test_palette_is_fixed_and_contrast_is_kept():
    colors, lumas = palette()
    assert len(colors) == len(lumas) == 4096 and palette() is palette()
    assert np.isclose(lumas[7], luma_of(colors[7]), atol=1e-3)
    rng = np.random.default_rng(0)
    for background in (0.0, 60.0, 127.0, 200.0, 255.0):
        # 120 levels leave few palette colours near mid-grey: black or white are the fallback.
        assert abs(luma_of(contrasting_color(background, 120.0, rng)) - background) >= 120.0


def test_has_tells_a_real_glyph_from_the_notdef_box(glyphs):
    assert glyphs.has("a") and glyphs.has("$") and glyphs.has("%")
    assert not glyphs.has("\u4e00")  # a CJK ideograph: DejaVu Sans has none
