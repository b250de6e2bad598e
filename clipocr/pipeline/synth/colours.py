"""Text and background colours drawn from a table measured on real word crops (DESIGN §3).

MJSynth coloured words from colour clusters of natural images and SynthTIGER from a colour map
of real ones: a palette drawn by hand gives combinations real signs rarely show (saturated text
on saturated ground) and misses the washed-out, low-contrast ones they often do. The table
``clipocr/assets/synth/colour_pairs.npy`` holds one ``text RGB, background RGB`` row per real
training crop (made once by ``bench/synth_colours.py``, which says how); a sample draws a row and
jitters it, or, over a photo background, takes the text colour of a row whose background is near
the photo's mean colour.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from clipocr.pipeline.synth.raster import LUMA

PAIRS_PATH = Path(__file__).resolve().parents[2] / "assets" / "synth" / "colour_pairs.npy"
JITTER = 10.0  # std of the per-channel jitter added to a table colour, in 0..255 levels
NEAREST = 16  # rows whose background is nearest a photo's mean colour, one drawn at random

RGB = tuple[int, int, int]


@lru_cache(maxsize=1)
def colour_pairs() -> tuple[np.ndarray, np.ndarray]:
    """(table (N, 6) float32: text RGB then background RGB, its background columns)."""
    table = np.load(PAIRS_PATH, allow_pickle=False).astype(np.float32)
    return table, np.ascontiguousarray(table[:, 3:])


def _rgb(values: np.ndarray) -> RGB:
    r, g, b = np.rint(np.clip(values, 0, 255)).astype(int).tolist()
    return (r, g, b)


def with_contrast(text: np.ndarray, bg: np.ndarray, min_contrast: float) -> np.ndarray:
    """`text` moved away from `bg` along their difference until their lumas differ by at least
    `min_contrast` (black or white where the difference runs out of range)."""
    diff = float((text - bg) @ LUMA)
    if abs(diff) >= min_contrast:
        return text
    bg_luma = float(bg @ LUMA)
    if abs(diff) > 4:
        moved = bg + (text - bg) * (min_contrast / abs(diff))
        if moved.min() >= 0 and moved.max() <= 255:
            return moved
    return np.full(3, 0.0 if bg_luma > 127 else 255.0, np.float32)


def draw_pair(min_contrast: float, rng: np.random.Generator) -> tuple[RGB, RGB]:
    """A real crop's (text, background) colours, jittered, with at least `min_contrast`."""
    table, _ = colour_pairs()
    row = table[int(rng.integers(len(table)))] + rng.normal(0, JITTER, 6).astype(np.float32)
    row = np.clip(row, 0, 255)
    return _rgb(with_contrast(row[:3], row[3:], min_contrast)), _rgb(row[3:])


def text_colour_for(bg: RGB, min_contrast: float, rng: np.random.Generator) -> RGB:
    """A text colour real crops pair with backgrounds near `bg` (one of the NEAREST rows)."""
    table, backs = colour_pairs()
    target = np.asarray(bg, np.float32)
    dist = ((backs - target) ** 2).sum(1)
    near = np.argpartition(dist, NEAREST)[:NEAREST]
    text = table[int(near[int(rng.integers(NEAREST))]), :3]
    text = np.clip(text + rng.normal(0, JITTER, 3).astype(np.float32), 0, 255)
    return _rgb(with_contrast(text, target, min_contrast))
