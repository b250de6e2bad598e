"""Charsets, label preparation and token ids.

Label preparation follows PARSeq's `LmdbDataset` (DESIGN §3), the convention every STR number is
reported under, in its order: strip whitespace, NFKD-normalise and drop non-ASCII, reject a label
longer than `max_len` *here* (before any charset filtering: "the original label might be too
long"), case-fold when the charset has no upper case and *remove* symbols outside the charset,
then reject a label left empty. Never truncated; rejections carry a reason so callers can count
them. Training and test labels are prepared alike; predictions get the charset filter alone (as
PARSeq's `CharsetAdapter` does: no Unicode normalisation, so ``héllo`` scores as ``hllo``).

Custom alphabets (issue 21): besides the three ASCII sets a charset can be a file (one symbol per
line, or one line of symbols) or a literal string (`Charset.from_spec`). Its labels keep their
Unicode: whitespace removed and NFC-normalised (precomposed ``ä``, as fonts map and as wordfreq
spells words), never folded to ASCII; the rest of the preparation is the same. A custom charset
is named by its symbols, so the name recorded in ``shards.json``, the store manifest and a
checkpoint rebuilds it anywhere without the file. A file listing exactly one of the ASCII sets
*is* that set (its protocol, its name).

Token ids (shared by the student, its datasets and the evaluator):
``0 = EOS``, ``1..C = characters``, ``C+1 = BOS``, ``C+2 = PAD``. The classifier predicts
``C + 1`` classes (EOS and the characters); BOS and PAD are inputs/ignore markers only.
"""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipocr.pipeline.errors import InputError

CHARSETS: dict[str, str] = {
    "36": string.digits + string.ascii_lowercase,
    "62": string.digits + string.ascii_lowercase + string.ascii_uppercase,
    "94": string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation,
}
MAX_LABEL_LEN = 25
# A spec that is no file and ends like one is a mistyped path, never a literal charset.
CHARSET_FILE_SUFFIXES = (".txt", ".tsv", ".csv", ".json", ".yaml", ".yml", ".chars", ".charset")

# Reasons a label is rejected; callers count them by these names.
REASON_EMPTY = "empty"
REASON_TOO_LONG = "too_long"


def normalize_label(label: str) -> str:
    """Whitespace removed, NFKD-normalised, non-ASCII dropped: the form whose length is checked."""
    text = "".join(label.split())
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def normalize_unicode_label(label: str) -> str:
    """A custom charset's form of a label: whitespace removed and NFC, no ASCII folding."""
    return unicodedata.normalize("NFC", "".join(label.split()))


class UnknownCharset(InputError, ValueError):
    """A charset spec that is neither 36, 62, 94, a charset file nor a usable literal: bad input
    (one line in the CLI), and still a `ValueError` for code that validates configs with it."""


def _symbols(text: str, where: str) -> str:
    """`text` as NFC symbols, refusing whitespace and repeats (a repeat is usually a mistyped
    file name taken for a literal, and would give one symbol two ids)."""
    chars = unicodedata.normalize("NFC", text)
    if any(c.isspace() for c in chars):
        raise UnknownCharset(f"{where}: whitespace cannot be a symbol (labels are stripped of it)")
    repeats = [c for c, n in Counter(chars).items() if n > 1]
    if repeats:
        raise UnknownCharset(f"{where}: symbols listed twice: {''.join(repeats)!r}")
    if len(chars) < 2:
        raise UnknownCharset(f"{where}: a charset needs at least 2 symbols, got {chars!r}")
    return chars


def _read_charset_file(path: Path) -> str:
    """The symbols of a charset file: one per line (blank lines ignored), or one line of them."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnknownCharset(f"{path}: not UTF-8; save the charset file as UTF-8") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not lines:
        raise UnknownCharset(f"{path}: empty charset file (one symbol per line)")
    if len(lines) == 1:
        return _symbols(lines[0][1], str(path))
    for lineno, line in lines:
        if len(unicodedata.normalize("NFC", line)) != 1:
            raise UnknownCharset(
                f"{path}:{lineno}: {line[:20]!r} is not one symbol (one symbol per line, "
                "or all of them on a single line)"
            )
    return _symbols("".join(line for _, line in lines), str(path))


def _existing_file(spec: str) -> Path | None:
    """`spec` as a charset file when it names one (a long literal is no path: the OS says so)."""
    path = Path(spec).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError):  # too long a name, a NUL: no file
        return None
    if is_dir:
        raise UnknownCharset(f"{spec}: a folder, not a charset file")
    return path if is_file else None


class LabelRejected(ValueError):
    """A label that cannot be trained on; `reason` is one of the REASON_* names."""

    def __init__(self, reason: str, label: str) -> None:
        super().__init__(f"label {label!r} rejected: {reason}")
        self.reason = reason
        self.label = label


@dataclass(frozen=True)
class Charset:
    """An ordered set of symbols plus the special ids the recognizer needs."""

    name: str
    chars: str
    max_len: int = MAX_LABEL_LEN
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i + 1 for i, c in enumerate(self.chars)})

    @classmethod
    def from_spec(cls, spec: str | int, max_len: int = MAX_LABEL_LEN) -> Charset:
        """``36``/``62``/``94``, a charset file, or a literal string of symbols (also a custom
        charset's `name`, which is its symbols).

        A short number that is not a set (``37``) and a missing path (``de.txt``) are refused
        rather than taken as literals; so is a literal with a repeated symbol, which most
        mistyped paths have."""
        key = str(spec)
        if key in CHARSETS:
            return cls(key, CHARSETS[key], max_len)
        path = _existing_file(key)
        if path is not None:
            return cls.custom(_read_charset_file(path), max_len)
        if key.isdigit() and len(key) <= 3:
            raise UnknownCharset(
                f"unknown charset {key!r}; choose one of {sorted(CHARSETS)}, a file or a string"
            )
        if key.lower().endswith(CHARSET_FILE_SUFFIXES) or key.endswith(("/", "\\")):
            raise UnknownCharset(f"{key}: no such charset file")
        return cls.custom(_symbols(key, f"charset {key[:40]!r}"), max_len)

    @classmethod
    def from_name(cls, name: str | int, max_len: int = MAX_LABEL_LEN) -> Charset:
        """The charset a recorded name stands for (what configs, manifests and checkpoints
        hold): `from_spec`, so a custom charset's name, its symbols, rebuilds it."""
        return cls.from_spec(name, max_len)

    @classmethod
    def custom(cls, chars: str, max_len: int = MAX_LABEL_LEN) -> Charset:
        """A charset of exactly `chars` (NFC symbols, validated), named by them; the same set
        as 36/62/94 is that set."""
        for name, builtin in CHARSETS.items():
            if sorted(chars) == sorted(builtin):
                return cls(name, builtin, max_len)
        return cls(chars, chars, max_len)

    @property
    def is_custom(self) -> bool:
        """Not one of the ASCII sets: labels keep their Unicode (NFC), no ASCII folding."""
        return self.name not in CHARSETS

    def describe(self) -> str:
        """One line for a table title or a log: the set's name, or a custom set's symbols."""
        if not self.is_custom:
            return f"charset {self.name}"
        shown = self.chars if len(self.chars) <= 60 else self.chars[:57] + "..."
        return f"custom charset of {len(self.chars)} symbols ({shown})"

    # ids ------------------------------------------------------------------------------------
    eos_id = 0

    @property
    def bos_id(self) -> int:
        return len(self.chars) + 1

    @property
    def pad_id(self) -> int:
        return len(self.chars) + 2

    @property
    def num_classes(self) -> int:
        """Classifier outputs: EOS plus every character."""
        return len(self.chars) + 1

    @property
    def lowercase_only(self) -> bool:
        return not any(c.isupper() for c in self.chars)

    # labels ---------------------------------------------------------------------------------
    def filter(self, text: str) -> str:
        """PARSeq's `CharsetAdapter`: case-fold for a lower-case charset, keep only its symbols.

        Applied raw to predictions (no Unicode normalisation: ``héllo`` → ``hllo``), and to
        labels after `normalize_label`."""
        if self.lowercase_only:
            text = text.lower()
        return "".join(c for c in text if c in self._index)

    def normalize(self, label: str) -> str:
        """The form of a label whose length is checked: ASCII-folded for 36/62/94 (PARSeq),
        NFC for a custom charset."""
        return normalize_unicode_label(label) if self.is_custom else normalize_label(label)

    def prepare(self, label: str) -> str:
        """Return the trainable form of `label` or raise `LabelRejected` (DESIGN §3)."""
        text = self.normalize(label)
        if len(text) > self.max_len:
            raise LabelRejected(REASON_TOO_LONG, label)
        text = self.filter(text)
        if not text:
            raise LabelRejected(REASON_EMPTY, label)
        return text

    def prepare_test(self, label: str) -> str | None:
        """The same preparation for a test label, None where the protocol drops it."""
        try:
            return self.prepare(label)
        except LabelRejected:
            return None

    # tokens ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Character ids of an already prepared label (no specials)."""
        try:
            return [self._index[c] for c in text]
        except KeyError as err:
            raise ValueError(f"{err.args[0]!r} is not in charset {self.name}") from None

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Characters up to the first EOS; BOS/PAD are skipped."""
        out = []
        for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
            if i == self.eos_id:
                break
            if 1 <= i <= len(self.chars):
                out.append(self.chars[i - 1])
        return "".join(out)

    def batch_targets(self, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forcing tensors for prepared labels, both ``(B, max_len_in_batch + 1)``.

        inputs  = ``[BOS, c1 … cL, PAD …]``, targets = ``[c1 … cL, EOS, PAD …]``.
        """
        width = max(len(s) for s in labels) + 1
        inputs = torch.full((len(labels), width), self.pad_id, dtype=torch.long)
        targets = torch.full((len(labels), width), self.pad_id, dtype=torch.long)
        for row, text in enumerate(labels):
            ids = self.encode(text)
            inputs[row, 0] = self.bos_id
            inputs[row, 1 : len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
            targets[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            targets[row, len(ids)] = self.eos_id
        return inputs, targets
