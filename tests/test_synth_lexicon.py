"""Word sampling: labels survive preparation; sign-like case, sign strings and punctuation occur."""

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
    texts = [sampler.sample(rng) for _ in range(3000)]
    labels = [sampler.label(t) for t in texts]
    for label in labels:
        prepared = charset.prepare(label)
        assert prepared == (label.lower() if charset.lowercase_only else label)
    # Mixed case, lexicon words and numbers all occur.
    assert any(s.istitle() for s in labels) and any(s.isupper() and len(s) > 2 for s in labels)
    numbers = [any(c.isdigit() for c in s) and not any(c.isalpha() for c in s) for s in labels]
    assert 0.05 < np.mean(numbers) < 0.2
    assert len(set(labels)) > 2500
    if name == "94":
        assert labels == texts  # every drawn symbol is in the charset: nothing is dropped
        assert any(not s.isalnum() for s in labels)


def test_drawn_text_keeps_punctuation_the_label_drops():
    sampler = WordSampler(Charset.from_name("36"))
    rng = np.random.default_rng(1)
    texts = [sampler.sample(rng) for _ in range(2000)]
    dropped = [t for t in texts if sampler.label(t) != t]
    assert 0.08 < len(dropped) / len(texts) < 0.35
    assert any(t.startswith("$") for t in dropped) and any("." in t for t in dropped)
    assert sampler.label("$4.00") == "400" and sampler.label("Policy,") == "Policy"


def test_case_mix_follows_real_signs():
    sampler = WordSampler(Charset.from_name("36"))
    rng = np.random.default_rng(2)
    words = [sampler.label(sampler.sample(rng)) for _ in range(3000)]
    words = [w for w in words if w.isalpha() and len(w) > 1]
    upper = np.mean([w.isupper() for w in words])
    lower = np.mean([w.islower() for w in words])
    assert upper > 0.35 and upper > lower  # real crops: about half in capitals
    # Half the words come from the most common ones: short words are frequent.
    assert np.median([len(w) for w in words]) <= 7


def test_lexicon_holds_no_wordfreq_digit_placeholders():
    words = WordSampler(Charset.from_name("36")).words
    assert len(words) > 10_000
    assert not any("00" in w for w in words)  # wordfreq writes "2024" as "0000"
