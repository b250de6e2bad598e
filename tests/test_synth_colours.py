"""Colour pairs: the shipped table is real-crop statistics; draws keep the contrast asked for."""

from __future__ import annotations

import numpy as np

from clipocr.pipeline.synth.colours import colour_pairs, draw_pair, text_colour_for, with_contrast
from clipocr.pipeline.synth.raster import LUMA


def _contrast(a, b) -> float:
    return abs(float((np.asarray(a, np.float32) - np.asarray(b, np.float32)) @ LUMA))


def test_table_holds_thousands_of_real_pairs_of_both_polarities():
    table, backs = colour_pairs()
    assert table.shape[1] == 6 and len(table) > 1000 and backs.shape == (len(table), 3)
    light_text = (table[:, :3] @ LUMA) > (table[:, 3:] @ LUMA)
    assert 0.2 < light_text.mean() < 0.8  # dark on light and light on dark both occur


def test_draws_keep_the_minimum_contrast():
    rng = np.random.default_rng(0)
    for _ in range(300):
        text, bg = draw_pair(60.0, rng)
        assert _contrast(text, bg) >= 59.0
    for bg in [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 30)]:
        assert _contrast(text_colour_for(bg, 60.0, rng), bg) >= 59.0


def test_with_contrast_moves_text_away_from_the_background():
    bg = np.array([120, 120, 120], np.float32)
    text = np.array([130, 130, 130], np.float32)
    moved = with_contrast(text, bg, 50.0)
    assert _contrast(moved, bg) >= 49.9 and moved.mean() > bg.mean()  # same polarity
    assert np.array_equal(with_contrast(np.zeros(3, np.float32), bg, 50.0), np.zeros(3))
