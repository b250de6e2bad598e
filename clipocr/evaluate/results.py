"""What an evaluation produces: every sample as read, and the figures derived from them.

A `Report` keeps each sample's raw label and raw prediction; rows, "Combined" rows, JSON and the
predictions TSV are all computed from those on demand (scored under PARSeq's protocol by
`metrics.score`), so every output agrees by construction. These types are what `report` renders
and what the trainer's validation reads; the loop that fills them lives in `benchmark`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from clipocr.evaluate.datasets import COMBINED, Dataset
from clipocr.evaluate.metrics import Score, Tally, score
from clipocr.pipeline.charset import Charset, LabelRejected

PROTOCOL_CHARSET = "36"


@dataclass(frozen=True)
class Sample:
    """One LMDB record as read: raw label, raw prediction (model charset), and any read error."""

    dataset: str
    index: int
    label: str
    text: str
    confidence: float
    error: str = ""

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.index}"


@dataclass(frozen=True)
class Row:
    """One dataset (or a Combined group) under one test charset."""

    name: str
    tally: Tally
    unreadable: int = 0
    dropped: int = 0
    members: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    # Why labels were dropped: ((reason, count, an example raw label), …), most common first.
    drop_reasons: tuple[tuple[str, int, str], ...] = ()

    @property
    def complete(self) -> bool:
        """False for a Combined row some of whose datasets were not evaluated."""
        return not self.missing

    @property
    def samples(self) -> int:
        return self.tally.samples

    @property
    def accuracy(self) -> float:
        return self.tally.accuracy

    @property
    def one_minus_ned(self) -> float:
        return self.tally.one_minus_ned

    @property
    def confidence(self) -> float:
        return self.tally.confidence


@dataclass
class Report:
    """Everything one evaluation produced; figures are derived from `samples` on demand."""

    datasets: list[Dataset]
    samples: list[Sample]
    charsets: tuple[str, ...] = (PROTOCOL_CHARSET,)
    max_len: int = 25
    unlabelled: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"
    batch_size: int = 1
    limit: int | None = None
    _scored: dict[str, list[tuple[Sample, Score]]] = field(default_factory=dict, repr=False)

    def scored(self, charset: str | None = None) -> list[tuple[Sample, Score]]:
        """Samples kept by the protocol of `charset` (default: the first), with scores."""
        name = charset or self.charsets[0]
        if name not in self._scored:
            cs = Charset.from_spec(name, self.max_len)
            pairs = ((s, score(s.text, s.label, cs)) for s in self.samples)
            self._scored[name] = [(s, sc) for s, sc in pairs if sc is not None]
        return self._scored[name]

    def drop_reasons(
        self, charset: str | None = None
    ) -> dict[str, tuple[tuple[str, int, str], ...]]:
        """Per dataset, why the protocol of `charset` dropped labels (`Row.drop_reasons`)."""
        cs = Charset.from_spec(charset or self.charsets[0], self.max_len)
        kept = {id(s) for s, _ in self.scored(charset)}
        counts: dict[str, Counter[str]] = {}
        example: dict[tuple[str, str], str] = {}
        for s in self.samples:
            if id(s) in kept:
                continue
            try:
                cs.prepare(s.label)
                reason = "unscored"  # not reached: what the protocol drops, `prepare` rejects
            except LabelRejected as rej:
                reason = rej.reason
            counts.setdefault(s.dataset, Counter())[reason] += 1
            example.setdefault((s.dataset, reason), s.label)
        return {
            name: tuple((r, n, example[name, r]) for r, n in c.most_common())
            for name, c in counts.items()
        }

    @property
    def rows(self) -> list[Row]:
        """Per-dataset rows under the first charset (the protocol), in `datasets` order."""
        return self.rows_for(None)

    def rows_for(self, charset: str | None) -> list[Row]:
        """Per-dataset rows under `charset` (None: the first, the protocol)."""
        tallies = {d.name: Tally() for d in self.datasets}
        unreadable = dict.fromkeys(tallies, 0)
        for s, sc in self.scored(charset):
            tallies[s.dataset].add(sc, s.confidence)
            unreadable[s.dataset] += bool(s.error)
        totals: dict[str, int] = dict.fromkeys(tallies, 0)
        for s in self.samples:
            totals[s.dataset] += 1
        reasons = self.drop_reasons(charset)
        return [
            Row(
                d.name,
                tallies[d.name],
                unreadable=unreadable[d.name],
                dropped=totals[d.name] - tallies[d.name].samples,
                drop_reasons=reasons.get(d.name, ()),
            )
            for d in self.datasets
        ]

    def combined(self, which: str, charset: str | None = None) -> Row | None:
        """The sample-weighted "Combined" row of `which` ("sub" or "full"), None if no member."""
        members = COMBINED[which]
        rows = [r for r in self.rows_for(charset) if r.name in members]
        if not rows:
            return None
        return Row(
            f"Combined ({which})",
            Tally.combine(r.tally for r in rows),
            unreadable=sum(r.unreadable for r in rows),
            dropped=sum(r.dropped for r in rows),
            members=tuple(r.name for r in rows),
            missing=tuple(m for m in members if m not in {r.name for r in rows}),
        )

    def overall(self, charset: str | None = None) -> Tally:
        """All evaluated samples pooled: what the trainer's validation reports."""
        return Tally.combine(r.tally for r in self.rows_for(charset))

    @property
    def errors(self) -> list[Sample]:
        return [s for s in self.samples if s.error]


@dataclass(frozen=True)
class Speed:
    """Inference speed after warm-up: latency at batch 1 and throughput at `batch_size`."""

    device: str
    ms_per_image: float
    images_per_s: float
    batch_size: int
    threads: int
