"""Styles: the hard style renders the same words as clean, with less contrast."""

from __future__ import annotations

import numpy as np

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.preprocess import decode_image
from clipocr.pipeline.synth.dataset import iter_samples
from clipocr.pipeline.synth.styles import STYLES

CS36 = Charset.from_name("36")


def test_hard_style_distorts_the_same_words_more():
    clean24 = list(iter_samples(24, seed=3, charset=CS36))
    hard = list(iter_samples(24, seed=3, charset=CS36, style="hard"))
    assert [label for _, label in hard] == [label for _, label in clean24]
    assert all(h != c for (h, _), (c, _) in zip(hard, clean24, strict=True))

    def contrast(samples):
        return np.mean([np.asarray(decode_image(d).convert("L"), float).std() for d, _ in samples])

    assert contrast(hard) < contrast(clean24)


def test_hard_ranges_contain_the_clean_ones():
    clean, hard = STYLES["clean"], STYLES["hard"]
    assert hard.rotate_deg > clean.rotate_deg and hard.perspective > clean.perspective
    assert hard.min_contrast <= clean.min_contrast and hard.fade[0] < clean.fade[0]
    assert hard.p_clutter > clean.p_clutter == 0.0
