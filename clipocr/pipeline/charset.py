"""Charsets, label preparation and token ids.

Label preparation follows PARSeq's `LmdbDataset` (DESIGN §3), the convention every STR number is
reported under, in its order: strip whitespace, NFKD-normalise and drop non-ASCII, reject a label
longer than `max_len` *here* (before any charset filtering: "the original label might be too
long"), case-fold when the charset has no upper case and *remove* symbols outside the charset,
then reject a label left empty. Never truncated; rejections carry a reason so callers can count
them. Training and test labels are prepared alike; predictions get the charset filter alone (as
PARSeq's `CharsetAdapter` does: no Unicode normalisation, so ``héllo`` scores as ``hllo``).

Token ids (shared by the student, its datasets and the evaluator):
``0 = EOS``, ``1..C = characters``, ``C+1 = BOS``, ``C+2 = PAD``. The classifier predicts
``C + 1`` classes (EOS and the characters); BOS and PAD are inputs/ignore markers only.
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass, field

import torch

from clipocr.pipeline.errors import InputError

CHARSETS: dict[str, str] = {
    "36": string.digits + string.ascii_lowercase,
    "62": string.digits + string.ascii_lowercase + string.ascii_uppercase,
    "94": string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation,
}
MAX_LABEL_LEN = 25

# Reasons a label is rejected; callers count them by these names.
REASON_EMPTY = "empty"
REASON_TOO_LONG = "too_long"


def normalize_label(label: str) -> str:
    """Whitespace removed, NFKD-normalised, non-ASCII dropped: the form whose length is checked."""
    text = "".join(label.split())
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


class UnknownCharset(InputError, ValueError):
    """A charset name that is not 36, 62 or 94: bad input (one line in the CLI), and still a
    `ValueError` for code that validates configs with it."""


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
    def from_name(cls, name: str | int, max_len: int = MAX_LABEL_LEN) -> Charset:
        key = str(name)
        if key not in CHARSETS:
            raise UnknownCharset(f"unknown charset {name!r}; choose one of {sorted(CHARSETS)}")
        return cls(key, CHARSETS[key], max_len)

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

    def prepare(self, label: str) -> str:
        """Return the trainable form of `label` or raise `LabelRejected` (DESIGN §3)."""
        text = normalize_label(label)
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
