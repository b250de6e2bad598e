import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipocr.pipeline.augment import OP_NAMES, StudentAugment


def _word() -> Image.Image:
    img = Image.new("RGB", (100, 32), (255, 255, 255))
    ImageDraw.Draw(img).text((4, 8), "hello", fill=(0, 0, 0))
    return img


def test_same_seed_same_pixels_and_seeds_differ() -> None:
    aug = StudentAugment()
    a, b = aug(_word(), 7), aug(_word(), 7)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    outs = {np.asarray(aug(_word(), s).resize((100, 32))).tobytes() for s in range(20)}
    assert len(outs) > 10  # different seeds give different augmentations
    assert all(aug(_word(), s).mode == "RGB" for s in range(5))


def test_global_rng_untouched() -> None:
    random.seed(1)
    np.random.seed(1)
    expected = (random.random(), np.random.rand())
    random.seed(1)
    np.random.seed(1)
    StudentAugment()(_word(), 3)
    assert (random.random(), np.random.rand()) == expected


def test_op_set_is_parseqs() -> None:
    names = [op.name for op in StudentAugment()._augment.ops]
    assert "SharpnessIncreasing" not in names and "Rotate" not in names  # replaced / removed
    assert names[-3:] == ["RotateExpand", "GaussianBlur", "PoissonNoise"]
    assert {"ShearX", "TranslateYRel", "ContrastIncreasing"} <= set(names)
    assert names == OP_NAMES and len(names) == 16  # the list device_augment mirrors


# -- PARSeq's geometric magnitudes (issue 22) ---------------------------------------------------
# Magnitude 5 of PARSeq's hparams (`aa_overrides`): shear factor, translation / image side. timm
# 1.x on its own would draw ±0.15 shear on both axes and ±0.225 translation on both.
PARSEQ_GEOMETRY = {"ShearX": 0.45, "ShearY": 0.10, "TranslateXRel": 0.05, "TranslateYRel": 0.15}
DOT = (64.5, 16.5)  # centre of the dot in Pillow's pixel-centre coordinates


def dot_image() -> Image.Image:
    """A white 3×3 dot on black, 128 × 32, centred on pixel (64, 16)."""
    img = Image.new("RGB", (128, 32))
    ImageDraw.Draw(img).rectangle((63, 15, 65, 17), fill=(255, 255, 255))
    return img


def dot_centre(pixels: np.ndarray) -> tuple[float, float]:
    """Intensity centroid (x, y) of the dot in a (H, W) grey array: a 9 × 9 window around the
    brightest pixel, so the grey fill at the borders is left out."""
    y0, x0 = np.unravel_index(np.argmax(pixels), pixels.shape)
    ys, xs = slice(max(y0 - 4, 0), y0 + 5), slice(max(x0 - 4, 0), x0 + 5)
    w = pixels[ys, xs].astype(float)
    yy, xx = np.mgrid[ys, xs]
    return float((w * xx).sum() / w.sum()) + 0.5, float((w * yy).sum() / w.sum()) + 0.5


def measured_magnitude(name: str, centre: tuple[float, float]) -> float:
    """The op's argument read back from the dot's displacement. Pillow's affine maps an output
    point to the input point (x + f·y, y) for ShearX, (x, f·x + y) for ShearY, (x + p·W, y) and
    (x, y + p·H) for the translations, so the dot moves by the negated product."""
    dx, dy = centre[0] - DOT[0], centre[1] - DOT[1]
    return {"ShearX": -dx / DOT[1], "ShearY": -dy / DOT[0], "TranslateXRel": -dx / 128,
            "TranslateYRel": -dy / 32}[name]  # fmt: skip


def test_drawn_shear_and_translate_ranges_are_parseqs() -> None:
    """Each geometric op of `StudentAugment`, forced to apply, over 24 seeds: the dot's measured
    displacement gives back PARSeq's magnitude with both signs, and nothing larger."""
    aug = StudentAugment()
    ops = {op.name: op for op in aug._augment.ops}
    state = random.getstate()
    try:
        for name, want in PARSEQ_GEOMETRY.items():
            op = ops[name]
            op.prob = 1.0
            drawn = []
            for seed in range(24):
                random.seed(seed)
                grey = np.asarray(op(dot_image()).convert("L"))
                drawn.append(measured_magnitude(name, dot_centre(grey)))
            assert min(drawn) == pytest.approx(-want, rel=0.05), (name, drawn)
            assert max(drawn) == pytest.approx(want, rel=0.05), (name, drawn)
            assert all(abs(abs(v) - want) < 0.05 * want for v in drawn), (name, drawn)
    finally:
        random.setstate(state)


def test_threads_augmenting_at_once_get_their_own_seeds_pixels() -> None:
    """Two threads augmenting side by side (the cache job's dask threads) each get the pixels of
    their own seed, as one thread alone would: the global RNG is not shared mid-draw."""
    from concurrent.futures import ThreadPoolExecutor

    aug = StudentAugment()
    word = _word()
    want = {s: np.asarray(aug(word, s)).tobytes() for s in range(40)}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: (s, np.asarray(aug(word, s)).tobytes()), list(range(40)) * 5))
    assert all(pixels == want[s] for s, pixels in got)
