"""WordRenderer: draws the given text; a sample depends on (seed, index) alone."""

from __future__ import annotations

import numpy as np
import pytest

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.synth.renderer import WordRenderer

CS36 = Charset.from_name("36")


def test_render_word_draws_the_given_text():
    renderer = WordRenderer(CS36, "clean", seed=0)
    short = renderer.render("ab", np.random.default_rng(1))
    long = renderer.render("abcdefghijkl", np.random.default_rng(1))
    assert long.width > 2.5 * short.width


def test_samples_do_not_depend_on_rendering_order():
    forward = WordRenderer(CS36, "hard", seed=9)
    backward = WordRenderer(CS36, "hard", seed=9)
    first = [forward.sample(i) for i in range(6)]
    last = [backward.sample(i) for i in reversed(range(6))][::-1]
    for (img_a, label_a), (img_b, label_b) in zip(first, last, strict=True):
        assert label_a == label_b and img_a.tobytes() == img_b.tobytes()


def test_families_are_sampled_before_faces():
    renderer = WordRenderer(CS36, seed=0)
    assert len(renderer.families) >= 20
    assert sum(len(f) for f in renderer.families) == len(renderer.faces)
    assert len({f[0].family for f in renderer.families}) == len(renderer.families)


def test_unknown_style_is_an_input_error():
    with pytest.raises(InputError, match="clean"):
        WordRenderer(CS36, "fancy")


def test_labels_are_the_drawn_text_less_what_the_charset_drops():
    renderer = WordRenderer(CS36, "clean", seed=4)
    for i in range(40):
        img, label = renderer.sample(i)
        text = renderer.words.sample(renderer.rng(i))
        assert label == renderer.words.label(text) and CS36.prepare(label) == label.lower()
        assert img.mode == "RGB" and img.width >= 8


def test_a_backgrounds_folder_joins_the_photo_bank(tmp_path):
    from PIL import Image

    Image.new("RGB", (100, 80), (200, 10, 10)).save(tmp_path / "red.jpg")
    base = WordRenderer(CS36, seed=0)
    more = WordRenderer(CS36, seed=0, backgrounds_dir=tmp_path)
    assert len(more.photos) == len(base.photos) + 1
    with pytest.raises(InputError, match="backgrounds"):
        WordRenderer(CS36, seed=0, backgrounds_dir=tmp_path / "nope")
