"""Word sampling: every label survives preparation; words, cases and numbers all occur."""

from __future__ import annotations

import numpy as np
import pytest

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.synth.lexicon import WordSampler


@pytest.mark.parametrize("name", ["36", "62", "94"])
def test_every_label_survives_preparation_unchanged_but_for_case(name):
    charset = Charset.from_name(name)
    sampler = WordSampler(charset)
    rng = np.random.default_rng(0)
    labels = [sampler.sample(rng) for _ in range(3000)]
    for label in labels:
        prepared = charset.prepare(label)
        assert prepared == (label.lower() if charset.lowercase_only else label)
    # Mixed case, lexicon words and numbers all occur.
    assert any(s.istitle() for s in labels) and any(s.isupper() and len(s) > 2 for s in labels)
    numbers = [any(c.isdigit() for c in s) and not any(c.isalpha() for c in s) for s in labels]
    assert 0.07 < np.mean(numbers) < 0.2
    assert len(set(labels)) > 2500
    if name == "94":
        assert any(not s.isalnum() for s in labels)


def test_lexicon_holds_no_wordfreq_digit_placeholders():
    words = WordSampler(Charset.from_name("36")).words
    assert len(words) > 10_000
    assert not any("00" in w for w in words)  # wordfreq writes "2024" as "0000"
