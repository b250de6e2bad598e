"""Sign strings: prices, phones, codes, addresses look like what real crops hold."""

from __future__ import annotations

import re

import numpy as np

from clipocr.pipeline.synth import signs


def test_each_kind_has_its_shape():
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert re.fullmatch(r"\$?\d{1,3}(\.\d\d)?(\$|/-|ea|/kg|/lb|/hr|\+)?", signs.price(rng))
        assert sum(c.isdigit() for c in signs.phone(rng)) >= 8
        assert re.fullmatch(r"[\d,.]+", signs.number(rng))
        assert re.search(r"\d", signs.code(rng))
        assert "%" in signs.offer(rng)
    assert any("." in signs.address("shop", "now", rng) for _ in range(20))


def test_sign_strings_mix_kinds_and_depend_on_the_generator_only():
    a = [signs.sign_string("sun", "mart", np.random.default_rng([7, i])) for i in range(300)]
    b = [signs.sign_string("sun", "mart", np.random.default_rng([7, i])) for i in range(300)]
    assert a == b and len(set(a)) > 250
    assert any(s.startswith("$") for s in a) and any("-" in s for s in a)
    brands = {signs.brand("sun", "mart", np.random.default_rng(i)) for i in range(50)}
    assert "SunMart" in brands and any(b.isupper() and len(b) <= 4 for b in brands)
