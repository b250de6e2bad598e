"""The words the renderer draws: wordfreq's English list, random strings and numbers.

MJSynth renders words from a ~90 k-word lexicon; wordfreq's top-N list stands in for it (no
lexicon file needs downloading), with random strings and decorated numbers mixed in so a student
does not learn only dictionary words.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

import numpy as np

from clipocr.pipeline.charset import Charset

LEXICON_SIZE = 50_000  # wordfreq's English top-N, sampled uniformly (MJSynth: ~90 k words)
P_RANDOM_STRING = 0.1
P_NUMBER = 0.1
CASE_WEIGHTS = {"lower": 0.5, "title": 0.3, "upper": 0.2}


@lru_cache(maxsize=8)
def _lexicon(allowed: frozenset[str], max_len: int) -> tuple[str, ...]:
    """wordfreq's top English words drawable in `allowed` symbols.

    Tokens with two or more consecutive digits are dropped: wordfreq replaces every digit of a
    multi-digit number by 0 ("2024" -> "0000"), so they are placeholders, not words. Numbers
    are generated separately.
    """
    from wordfreq import top_n_list

    smashed = re.compile(r"\d\d")
    return tuple(
        w
        for w in top_n_list("en", LEXICON_SIZE)
        if 0 < len(w) <= max_len and set(w) <= allowed and not smashed.search(w)
    )


class WordSampler:
    """Draws label strings: lexicon words in lower/Title/UPPER case, random strings, numbers.

    Every string uses only symbols the charset keeps (upper-case letters are case-folded by a
    lower-case charset, not removed), so `charset.prepare` accepts every one of them.
    """

    def __init__(self, charset: Charset) -> None:
        self.charset = charset
        symbols = set(charset.chars) | set(charset.chars.swapcase())
        self.letters = "".join(c for c in string.ascii_letters if c in symbols)
        self.digits = "".join(c for c in string.digits if c in symbols)
        self.punct = "".join(c for c in string.punctuation if c in symbols)
        self.words = _lexicon(frozenset(symbols), charset.max_len)
        if not self.words or not self.digits:
            raise ValueError(f"charset {charset.name} has too few symbols to render words from")
        self._cases = list(CASE_WEIGHTS)
        self._case_p = np.array(list(CASE_WEIGHTS.values()))

    @property
    def description(self) -> str:
        return (
            f"wordfreq en top {LEXICON_SIZE} ({len(self.words)} words drawable in charset "
            f"{self.charset.name}; lower/Title/UPPER {'/'.join(map(str, CASE_WEIGHTS.values()))})"
            f" + {P_RANDOM_STRING:.0%} random strings + {P_NUMBER:.0%} numbers"
        )

    def sample(self, rng: np.random.Generator) -> str:
        u = rng.random()
        if u < P_RANDOM_STRING:
            return self._random_string(rng)
        if u < P_RANDOM_STRING + P_NUMBER:
            return self._number(rng)
        word = self.words[rng.integers(len(self.words))]
        case = self._cases[rng.choice(len(self._cases), p=self._case_p)]
        return word.upper() if case == "upper" else word.title() if case == "title" else word

    def _random_string(self, rng: np.random.Generator) -> str:
        pool = self.letters + self.digits
        if self.punct and rng.random() < 0.3:
            pool += self.punct
        n = int(rng.integers(1, 11))
        return "".join(pool[i] for i in rng.integers(len(pool), size=n))

    def _number(self, rng: np.random.Generator) -> str:
        n = int(rng.integers(1, 8))
        digits = "".join(self.digits[i] for i in rng.integers(len(self.digits), size=n))
        text = (digits.lstrip("0") or "0") if rng.random() < 0.8 else digits
        return self._decorate_number(text, rng) if self.punct else text

    def _decorate_number(self, text: str, rng: np.random.Generator) -> str:
        """Prices, decimals, times, percentages… where the charset has the punctuation."""
        forms = [
            lambda t: t,
            lambda t: f"{t[:-2] or '0'}.{t[-2:]:0>2}",
            lambda t: f"${t}",
            lambda t: f"{t}%",
            lambda t: f"{int(t) % 24}:{int(rng.integers(60)):02d}",
            lambda t: f"{int(t):,}",
            lambda t: f"-{t}",
            lambda t: f"#{t}",
        ]
        out = forms[int(rng.integers(len(forms)))](text)
        return out if set(out) <= set(self.digits + self.punct) else text
