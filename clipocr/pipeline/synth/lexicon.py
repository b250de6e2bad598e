"""The words the renderer draws: wordfreq's English list, the strings signs hold, random strings.

MJSynth renders words from a ~90 k-word lexicon; wordfreq's top-N list stands in for it (no
lexicon file needs downloading). Real crops are not a uniform draw from a dictionary, though:
half of IIIT5k's and IC15's training words are in capitals, they are short and common ("SALE",
"HOTEL"), and one in ten is a price, phone number, code, web address or brand name. So half the
words come from the 5,000 most common, capitals come first, and `signs` strings, brand-like
names and words with punctuation are mixed in. A sample's *drawn* text may hold symbols its
label's charset drops (``$4.00`` is labelled ``400`` under the 36-symbol protocol, as real
labels are); `WordSampler.label` gives the label.

A custom charset with letters beyond ASCII (German ``äöüß``, Vietnamese) draws its words from the
wordfreq language that writes most of its common words with those letters (`lexicon_language`),
and its random strings from all of its letters; the ASCII sets keep the English list and the
exact draws they always had.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

import numpy as np

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.synth.signs import brand, sign_string, with_punctuation

LEXICON_SIZE = 50_000  # wordfreq's English top-N, sampled uniformly (MJSynth: ~90 k words)
P_RANDOM_STRING = 0.05
P_SIGN = 0.15  # prices, phone numbers, codes, addresses, times, offers, numbers (`signs`)
P_BRAND = 0.07  # brand-like names (`signs.brand`)
P_PUNCT = 0.06  # of lexicon words: punctuation attached ("Policy," "Rubber!")
COMMON_TOP, P_COMMON = 5000, 0.5  # half the words from the most common 5,000
# Real crops' case (IIIT5k / IC15 training labels): UPPER 47 % / 55 %, Title 23 / 25 %,
# lower 17 / 14 %; the rest numbers and mixed.
CASE_WEIGHTS = {"lower": 0.25, "title": 0.3, "upper": 0.45}
LANGUAGE_PROBE = 5000  # words of each language's small list looked at to choose one (≈ 2 s)


@lru_cache(maxsize=8)
def lexicon_language(allowed: frozenset[str]) -> str:
    """The wordfreq language that writes the most of the non-ASCII letters of `allowed` in its
    common words drawable in `allowed`, then the most such words (English when none does): the
    lexicon for a custom alphabet. Letters first, so ``äöüß`` picks German, not Swedish (whose
    many ``ä``/``ö`` words would otherwise win)."""
    from wordfreq import available_languages, top_n_list

    extra = {c for c in allowed if c.isalpha() and not c.isascii()}
    if not extra:
        return "en"
    best, best_score = "en", (0, 0)
    for lang in sorted(available_languages()):
        words = top_n_list(lang, LANGUAGE_PROBE, wordlist="small")
        used = [extra.intersection(w) for w in words if set(w) <= allowed]
        score = (len(set().union(*used)), sum(1 for u in used if u))
        if score > best_score:
            best, best_score = lang, score
    return best


@lru_cache(maxsize=8)
def _lexicon(allowed: frozenset[str], max_len: int, lang: str = "en") -> tuple[str, ...]:
    """wordfreq's top words of `lang` drawable in `allowed` symbols.

    Tokens with two or more consecutive digits are dropped: wordfreq replaces every digit of a
    multi-digit number by 0 ("2024" -> "0000"), so they are placeholders, not words. Numbers
    are generated separately.
    """
    from wordfreq import top_n_list

    smashed = re.compile(r"\d\d")
    return tuple(
        w
        for w in top_n_list(lang, LEXICON_SIZE)
        if 0 < len(w) <= max_len and set(w) <= allowed and not smashed.search(w)
    )


class WordSampler:
    """Draws the strings to render: lexicon words in UPPER/Title/lower case, sign strings,
    brand-like names, random strings.

    `sample` gives the text to draw, `label` its label: the text less the symbols the charset
    lacks (upper-case letters are case-folded by a lower-case charset, not removed), which
    `charset.prepare` accepts unchanged but for case.
    """

    def __init__(self, charset: Charset) -> None:
        self.charset = charset
        symbols = set(charset.chars) | set(charset.chars.swapcase())
        self._symbols = frozenset(symbols)
        # ASCII first, in the order the ASCII sets always drew them (their data stays the same
        # for a seed), then a custom charset's other symbols in code-point order.
        others = sorted(c for c in symbols if not c.isascii())
        self.letters = "".join(c for c in string.ascii_letters if c in symbols)
        self.letters += "".join(c for c in others if c.isalpha())
        self.digits = "".join(c for c in string.digits if c in symbols)
        self.digits += "".join(c for c in others if c.isdecimal())
        self.punct = "".join(c for c in string.punctuation if c in symbols)
        self.punct += "".join(c for c in others if not c.isalnum())
        self.language = lexicon_language(frozenset(symbols))
        self.words = _lexicon(frozenset(symbols), charset.max_len, self.language)
        if not self.words or not (self.digits or charset.is_custom):
            raise InputError(
                f"{charset.describe()}: too few symbols to render words from (no "
                f"{'word of the wordfreq lexicon' if self.digits else 'digit'} is drawable in it)"
            )
        self._cases = list(CASE_WEIGHTS)
        self._case_p = np.array(list(CASE_WEIGHTS.values()))

    @property
    def description(self) -> str:
        return (
            f"wordfreq {self.language} top {LEXICON_SIZE} ({len(self.words)} words drawable in "
            f"{self.charset.describe()}; lower/Title/UPPER "
            f"{'/'.join(map(str, CASE_WEIGHTS.values()))})"
            f", half from the top {COMMON_TOP}) + {P_SIGN:.0%} sign strings (prices, phones, "
            f"codes, addresses, times) + {P_BRAND:.0%} brand-like names + {P_RANDOM_STRING:.0%} "
            f"random strings; {P_PUNCT:.0%} of words with punctuation"
        )

    def label(self, text: str) -> str:
        """The label of drawn `text`: its symbols the charset keeps (in either case)."""
        return "".join(c for c in text if c in self._symbols)

    def sample(self, rng: np.random.Generator) -> str:
        """Text to draw; its `label` is never empty and at most the charset's `max_len`."""
        u = rng.random()
        if u < P_RANDOM_STRING:
            return self._random_string(rng)
        if u < P_RANDOM_STRING + P_SIGN + P_BRAND:
            first, second = self._word(rng), self._word(rng)
            if u < P_RANDOM_STRING + P_SIGN:
                text = sign_string(first, second, rng) if "0" in self.digits else None
            else:
                text = brand(first, second, rng)
            # A custom alphabet may drop every symbol of a sign string, and two words run
            # together may be too long: a plain word then.
            label = self.label(text) if text else ""
            if text and 0 < len(label) <= self.charset.max_len:
                return text
        word = self._word(rng)
        case = self._cases[rng.choice(len(self._cases), p=self._case_p)]
        out = word.upper() if case == "upper" else word.title() if case == "title" else word
        # Some letters' capitals are two code points outside the charset ('ǰ' → 'J̌'): such
        # a word stays lower case.
        out = out if set(out) <= self._symbols else word
        if rng.random() < P_PUNCT and len(out) + 3 <= self.charset.max_len:
            out = with_punctuation(out, rng)
        return out

    def _word(self, rng: np.random.Generator) -> str:
        """A lexicon word, half the time one of the COMMON_TOP most frequent (lexicon order is
        wordfreq's rank order)."""
        top = min(COMMON_TOP, len(self.words)) if rng.random() < P_COMMON else len(self.words)
        return self.words[int(rng.integers(top))]

    def _random_string(self, rng: np.random.Generator) -> str:
        pool = self.letters + self.digits
        if self.punct and rng.random() < 0.3:
            pool += self.punct
        n = int(rng.integers(1, 11))
        return "".join(pool[i] for i in rng.integers(len(pool), size=n))

    def _number(self, rng: np.random.Generator) -> str:
        if not self.digits:  # a custom alphabet without digits: a random string instead
            return self._random_string(rng)
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
