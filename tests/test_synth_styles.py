"""Styles: the hard style renders the same words as clean, smaller and with less contrast."""

from __future__ import annotations

import numpy as np

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.preprocess import decode_image
from clipocr.pipeline.synth.dataset import iter_samples
from clipocr.pipeline.synth.styles import STYLES

CS36 = Charset.from_name("36")


def test_hard_style_distorts_the_same_words_more():
    clean = list(iter_samples(40, seed=3, charset=CS36))
    hard = list(iter_samples(40, seed=3, charset=CS36, style="hard"))
    assert [label for _, label in hard] == [label for _, label in clean]
    assert all(h != c for (h, _), (c, _) in zip(hard, clean, strict=True))

    def sharpness(samples):
        """Mean absolute horizontal gradient at the training size: blur and fading lower it."""
        out = []
        for data, _ in samples:
            img = np.asarray(decode_image(data).convert("L").resize((128, 32)), float)
            out.append(np.abs(np.diff(img, axis=1)).mean())
        return np.mean(out)

    assert sharpness(hard) < sharpness(clean)


def test_hard_ranges_contain_the_clean_ones():
    clean, hard = STYLES["clean"], STYLES["hard"]
    assert hard.rotate_deg > clean.rotate_deg and hard.perspective > clean.perspective
    assert hard.min_contrast <= clean.min_contrast and hard.fade[0] < clean.fade[0]
    assert hard.p_clutter > clean.p_clutter and hard.p_lowres > clean.p_lowres
    assert hard.height[0] <= clean.height[0] and hard.p_jpeg >= clean.p_jpeg
