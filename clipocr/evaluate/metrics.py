"""Per-sample scoring and per-dataset tallies under PARSeq's test protocol (DESIGN §7).

Every published STR number (PARSeq, CLIP-OCR) is computed this way, so matching it exactly is what
makes our figures comparable: the label is prepared with `Charset.prepare_test` (whitespace
removed, NFKD → ASCII, too-long labels dropped *before* filtering, then case-folded and filtered;
empty ones dropped), the raw prediction goes through `Charset.filter` alone (case-fold and
removal, no Unicode normalisation, as PARSeq's `CharsetAdapter`), and then

- word accuracy  = exact match of the two strings,
- 1 − NED        with NED = edit distance / max(len(pred), len(gt)) (ICDAR 2019),
- confidence     = product of the per-step max probabilities, EOS included (computed by the model).

Figures are percentages, as in the papers' tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from clipocr.pipeline.charset import Charset


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit cost insert/delete/substitute), O(len(a)·len(b))."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalized_edit_distance(pred: str, gt: str) -> float:
    """ICDAR 2019 NED in [0, 1]; two empty strings are identical (0), not undefined."""
    longest = max(len(pred), len(gt))
    return edit_distance(pred, gt) / longest if longest else 0.0


@dataclass(frozen=True)
class Score:
    """One sample scored under one test charset."""

    label: str
    prediction: str
    correct: bool
    ned: float


def score(raw_prediction: str, raw_label: str, charset: Charset) -> Score | None:
    """Score one sample, or None when the protocol drops its label (too long or empty)."""
    label = charset.prepare_test(raw_label)
    if label is None:
        return None
    prediction = charset.filter(raw_prediction)
    return Score(
        label, prediction, prediction == label, normalized_edit_distance(prediction, label)
    )


@dataclass
class Tally:
    """Running sums for one dataset; the figures are derived so sums stay exact when merged."""

    samples: int = 0
    correct: int = 0
    ned_sum: float = 0.0
    confidence_sum: float = 0.0

    def add(self, s: Score, confidence: float) -> None:
        self.samples += 1
        self.correct += int(s.correct)
        self.ned_sum += s.ned
        self.confidence_sum += confidence

    @property
    def accuracy(self) -> float:
        """Word accuracy in percent (0 for an empty tally, which the table shows as such)."""
        return 100.0 * self.correct / self.samples if self.samples else 0.0

    @property
    def one_minus_ned(self) -> float:
        return 100.0 * (1.0 - self.ned_sum / self.samples) if self.samples else 0.0

    @property
    def confidence(self) -> float:
        return 100.0 * self.confidence_sum / self.samples if self.samples else 0.0

    @classmethod
    def combine(cls, tallies: Iterable[Tally]) -> Tally:
        """Pool datasets: the sample-weighted average of every figure (the papers' "Combined")."""
        out = cls()
        for t in tallies:
            out.samples += t.samples
            out.correct += t.correct
            out.ned_sum += t.ned_sum
            out.confidence_sum += t.confidence_sum
        return out
