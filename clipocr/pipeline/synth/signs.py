"""The strings real signs hold besides dictionary words: prices, phone numbers, web addresses,
codes, times, offers, brand-like names, and words with punctuation attached (DESIGN §3).

Real scene-text crops are full of them (IC15's training labels: ``$4.00``, ``62-03``,
``#14-01``, ``7-9pm``, ``100,000``, ``20%``, ``EW15``; IIIT5k's: ``143KM``, ``A52``). They are
drawn with their punctuation even when the label's charset drops it (the 36-symbol protocol
labels ``$4.00`` as ``400``), so a student learns to read through the symbols real crops show.
Every generator draws from the sample's own generator, so a string is a function of the seed.
"""

from __future__ import annotations

import string

import numpy as np

UPPER = string.ascii_uppercase
DIGITS = string.digits
TLDS = ("com", "net", "org", "co", "sg", "uk", "com.sg", "co.uk", "info", "biz", "io")
BRAND_SUFFIXES = ("mart", "land", "tech", "co", "ex", "ify", "ly", "corp", "max", "plus", "zone")
UNITS = ("KM", "km", "m", "kg", "g", "ml", "L", "cm", "mm", "pm", "am", "h", "min", "GB", "MB")
WORD_PUNCT = (
    (lambda w: w + ","),
    (lambda w: w + "."),
    (lambda w: w + "!"),
    (lambda w: w + ":"),
    (lambda w: w + "'s"),
    (lambda w: w + "?"),
    (lambda w: f'"{w}'),
    (lambda w: f'"{w}"'),
    (lambda w: f"({w})"),
    (lambda w: f"{w}-"),
    (lambda w: f"-{w}"),
    (lambda w: f"'{w}"),
    (lambda w: f"{w}&"),
    (lambda w: f"{w}*"),
)


def _digits(rng: np.random.Generator, n: int, lead_zero: bool = False) -> str:
    out = "".join(DIGITS[i] for i in rng.integers(10, size=n))
    return out if lead_zero or n == 1 or out[0] != "0" else str(int(rng.integers(1, 10))) + out[1:]


def _pick(rng: np.random.Generator, options: tuple) -> str:
    return options[int(rng.integers(len(options)))]


def price(rng: np.random.Generator) -> str:
    whole = _digits(rng, int(rng.integers(1, 4)))
    cents = _digits(rng, 2, lead_zero=True) if rng.random() < 0.6 else None
    if cents is not None and rng.random() < 0.3:
        cents = _pick(rng, ("99", "95", "90", "50", "00"))
    body = whole if cents is None else f"{whole}.{cents}"
    form = rng.random()
    if form < 0.55:
        return "$" + body
    if form < 0.7:
        return body + "/-" if rng.random() < 0.3 else body + "$"
    if form < 0.8:
        return body + _pick(rng, ("ea", "/kg", "/lb", "/hr", "+"))
    return body


def phone(rng: np.random.Generator) -> str:
    form = int(rng.integers(5))
    if form == 0:
        return f"{_digits(rng, 4)}-{_digits(rng, 4, True)}"
    if form == 1:
        return f"({_digits(rng, 3)}){_digits(rng, 3, True)}-{_digits(rng, 4, True)}"
    if form == 2:
        return f"1-800-{_digits(rng, 3, True)}-{_digits(rng, 4, True)}"
    if form == 3:
        return f"+{_digits(rng, 2)}{_digits(rng, 8, True)}"
    return f"{_digits(rng, 3)}.{_digits(rng, 3, True)}.{_digits(rng, 4, True)}"


def address(word: str, other: str, rng: np.random.Generator) -> str:
    """A web or mail address, a handle or a hashtag built from lexicon words."""
    form = int(rng.integers(6))
    if form == 0:
        return f"www.{word}{other if rng.random() < 0.5 else ''}.{_pick(rng, TLDS)}"
    if form == 1:
        return f"{word}.{_pick(rng, TLDS)}"
    if form == 2:
        return f"{word}@{other}.{_pick(rng, TLDS)}"
    if form == 3:
        return "@" + word + (other if rng.random() < 0.5 else "")
    if form == 4:
        return "#" + word + other
    return f"{word}.{_pick(rng, TLDS)}/{other}"


def code(rng: np.random.Generator) -> str:
    """Unit, platform, route, model and room codes: A52, EW15, #14-01, L14, 143KM, no.1."""
    form = int(rng.integers(7))
    letters = "".join(UPPER[i] for i in rng.integers(26, size=int(rng.integers(1, 4))))
    if form == 0:
        return letters + _digits(rng, int(rng.integers(1, 4)))
    if form == 1:
        return _digits(rng, int(rng.integers(1, 4))) + letters
    if form == 2:
        return f"#{_digits(rng, 2, True)}-{_digits(rng, 2, True)}"
    if form == 3:
        return _digits(rng, int(rng.integers(1, 4))) + _pick(rng, UNITS)
    if form == 4:
        prefix = _pick(rng, ("No.", "no.", "NO.", "Vol.", "Rm"))
        return prefix + _digits(rng, 1 + int(rng.integers(2)))
    if form == 5:
        return f"{letters}-{_digits(rng, int(rng.integers(2, 5)))}"
    return f"{_digits(rng, 2)}-{_digits(rng, 2, True)}"


def when(rng: np.random.Generator) -> str:
    """Times, hours, dates and years."""
    form = int(rng.integers(5))
    hour = int(rng.integers(1, 13))
    if form == 0:
        return f"{int(rng.integers(24))}:{int(rng.integers(60)):02d}"
    if form == 1:
        return f"{hour}-{int(rng.integers(1, 13))}{_pick(rng, ('pm', 'am', 'PM', 'AM'))}"
    if form == 2:
        return f"{int(rng.integers(1, 29))}/{int(rng.integers(1, 13))}"
    if form == 3:
        return str(int(rng.integers(1900, 2031)))
    day, month, year = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(100))
    return f"{day:02d}.{month:02d}.{year:02d}"


def offer(rng: np.random.Generator) -> str:
    pct = _pick(rng, ("10", "15", "20", "25", "30", "40", "50", "60", "70")) + "%"
    form = rng.random()
    if form < 0.5:
        return pct
    if form < 0.8:
        return pct + _pick(rng, ("OFF", "off", "Off"))
    return _pick(rng, ("-", "Upto", "UPTO")) + pct


def number(rng: np.random.Generator) -> str:
    """Plain numbers, with thousands separators or decimals now and then."""
    n = int(rng.integers(1, 8))
    text = _digits(rng, n, lead_zero=rng.random() < 0.2)
    form = rng.random()
    if form < 0.15 and n >= 4:
        return f"{int(text):,}"
    if form < 0.25 and n >= 2:
        return f"{text[:-1]}.{text[-1]}"
    return text


def brand(word: str, other: str, rng: np.random.Generator) -> str:
    """A brand-like name: two words run together, a word with a trade suffix, or an acronym."""
    form = int(rng.integers(5))
    if form == 0:
        return word.title() + other.title()
    if form == 1:
        return (word + other).upper()
    if form == 2:
        return word.title() + _pick(rng, BRAND_SUFFIXES)
    if form == 3:
        letters = [UPPER[i] for i in rng.integers(26, size=int(rng.integers(2, 5)))]
        joiner = _pick(rng, ("", "", "", "&", "."))
        return joiner.join(letters) if joiner != "&" else f"{letters[0]}&{''.join(letters[1:])}"
    return word.upper() + _pick(rng, ("'S", "'s", "!", "+", "24", "7", "1"))


def with_punctuation(word: str, rng: np.random.Generator) -> str:
    """`word` with punctuation attached, as sentences and slogans on signs show it."""
    return WORD_PUNCT[int(rng.integers(len(WORD_PUNCT)))](word)


def sign_string(word: str, other: str, rng: np.random.Generator) -> str:
    """One of the non-dictionary strings above, in rough proportion to how often signs show
    them (`word`, `other`: lexicon words to build addresses from)."""
    u = rng.random()
    if u < 0.25:
        return number(rng)
    if u < 0.42:
        return price(rng)
    if u < 0.6:
        return code(rng)
    if u < 0.7:
        return phone(rng)
    if u < 0.8:
        return address(word, other, rng)
    if u < 0.9:
        return when(rng)
    return offer(rng)
