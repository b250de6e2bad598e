"""Effects: each degradation changes the image the way its name says, at the same size."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from clipocr.pipeline.synth.effects import degrade, jpeg, motion_kernel
from clipocr.pipeline.synth.styles import STYLES

WORD = Image.new("RGB", (120, 32), (240, 240, 240))
ImageDraw.Draw(WORD).rectangle([20, 8, 100, 24], fill=(10, 10, 10))
OFF = dict(p_light=0.0, fade=(1.0, 1.0), p_lowres=0.0, p_motion=0.0, p_blur=0.0, p_jpeg=0.0)


def _edge(img: Image.Image) -> float:
    return float(np.abs(np.diff(np.asarray(img.convert("L"), float), axis=1)).max())


def test_nothing_drawn_leaves_the_image_alone():
    st = dataclasses.replace(STYLES["clean"], **OFF, noise_sigma=(0.0, 0.0))
    assert degrade(WORD, st, np.random.default_rng(0)).tobytes() == WORD.tobytes()


def test_motion_blur_softens_edges_and_jpeg_keeps_the_size():
    blurred = WORD.filter(motion_kernel(5, 0.0))
    assert _edge(blurred) < 0.5 * _edge(WORD)
    assert jpeg(WORD, 20).size == WORD.size and jpeg(WORD, 20).tobytes() != WORD.tobytes()


def test_hard_degradations_lower_sharpness_on_average():
    hard = dataclasses.replace(STYLES["hard"], p_lowres=0.5, p_motion=0.25, p_blur=0.25)
    rng = np.random.default_rng(1)
    outs = [degrade(WORD, hard, rng) for _ in range(20)]
    assert all(o.size == WORD.size and o.mode == "RGB" for o in outs)
    assert np.mean([_edge(o) for o in outs]) < 0.8 * _edge(WORD)
