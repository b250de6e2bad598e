"""The text table's parts on storage, and the label → (part, row) index the writers look up.

The table (``ROOT/__text_table/part-NNNNNN/``, see `text_table` for its arrays) grows by
immutable parts, so a part is identified for good by its number and the id of the writer that
published it; `part_signature` is that identity for the complete parts of a store.

`label_index` is what every shard task of ``cache-teacher`` asks for its samples' references.
Rebuilding it in every task cost O(labels) per task (issue 22: ≈ 20 ms + 0.8 µs per label,
O(shards × labels) in all), so it is kept per process and per store, and rebuilt only when the
parts change (a newer part is appended to it). It is held as sorted UTF-8 byte strings with
int32 references, not as a dict: about 40 B per label instead of about 250.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import zarr

from clipocr.pipeline.teacher_store.location import Location, group_attrs
from clipocr.pipeline.teacher_store.ownership import OWNER_ATTR
from clipocr.pipeline.teacher_store.spec import STAGES_IMAGE, TABLE_DIR

PART_RE = re.compile(r"^part-(\d{6})$")
# Labels per chunk of a part: 64 × 26 positions ≈ a shard chunk's rows of image features.
TABLE_CHUNK = 64


def part_name(number: int) -> str:
    return f"part-{number:06d}"


def part_path(number: int) -> str:
    """A part's folder relative to the store root."""
    return f"{TABLE_DIR}/{part_name(number)}"


def table_taps(taps: Iterable[str]) -> tuple[str, ...]:
    """The taps that live in the table: everything but the image taps."""
    return tuple(t for t in taps if t not in STAGES_IMAGE)


def complete_parts(loc: Location) -> dict[int, dict]:
    """Part number → attributes of every complete part, in number order."""
    table = Location(loc.child(TABLE_DIR))
    out = {}
    for d in table.dirs():
        m = PART_RE.match(d)
        attrs = group_attrs(table, d) if m else None
        if attrs and attrs.get("complete"):
            out[int(m[1])] = attrs
    return dict(sorted(out.items()))


def part_identity(number: int, attrs: dict) -> tuple[int, str, int]:
    """(number, publishing writer's id, labels): what tells one part from any other."""
    owner = attrs.get(OWNER_ATTR) or {}
    return number, str(owner.get("id", "")), int(attrs.get("count", 0))


def as_bytes(labels: Iterable[str]) -> np.ndarray:
    """Labels as fixed-width UTF-8 byte strings (compact, sortable, memory-mappable)."""
    encoded = [s.encode("utf-8") for s in labels]
    return np.array(encoded, dtype=f"S{max((len(b) for b in encoded), default=1) or 1}")


class LabelIndex:
    """Label → (part, row) over a store's complete parts; the first part holding a label wins."""

    def __init__(self, labels: np.ndarray, refs: np.ndarray) -> None:
        self.labels = labels  # sorted, unique, bytes
        self.refs = refs  # (n, 2) int32: (part, row)

    @classmethod
    def build(cls, parts: Sequence[tuple[int, Sequence[str]]]) -> LabelIndex:
        """From (part number, its labels in row order) in part order."""
        if not parts or not sum(len(labels) for _, labels in parts):
            return cls(np.empty(0, "S1"), np.empty((0, 2), np.int32))
        labels = as_bytes(s for _, part in parts for s in part)
        refs = np.concatenate(
            [np.stack([np.full(len(p), n), np.arange(len(p))], 1) for n, p in parts if len(p)]
        ).astype(np.int32)
        uniq, first = np.unique(labels, return_index=True)  # stable: the earliest part wins
        return cls(uniq, refs[first])

    def extended(self, parts: Sequence[tuple[int, Sequence[str]]]) -> LabelIndex:
        """This index plus later parts (their labels already here keep their old reference)."""
        new = LabelIndex.build(parts)
        keep = ~self._found(new.labels)[1]
        if not keep.any():
            return self
        labels = np.concatenate([self.labels, new.labels[keep]])  # widens the byte strings
        refs = np.concatenate([self.refs, new.refs[keep]])
        order = np.argsort(labels, kind="stable")
        return LabelIndex(labels[order], refs[order])

    def __len__(self) -> int:
        return len(self.labels)

    def _found(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(self.labels):
            return np.zeros(len(query), np.int64), np.zeros(len(query), bool)
        at = np.searchsorted(self.labels, query)
        at = np.minimum(at, len(self.labels) - 1)
        return at, self.labels[at] == query

    def lookup(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(refs (n, 2) int32, found (n,) bool); rows not found hold -1."""
        if not len(labels) or not len(self.labels):
            return np.full((len(labels), 2), -1, np.int32), np.zeros(len(labels), bool)
        at, found = self._found(as_bytes(labels))
        refs = np.where(found[:, None], self.refs[at], -1).astype(np.int32)
        return refs, found

    def get(self, label: str) -> tuple[int, int] | None:
        refs, found = self.lookup([label])
        return (int(refs[0, 0]), int(refs[0, 1])) if found[0] else None

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str) and self.get(label) is not None

    def missing(self, labels: Iterable[str]) -> list[str]:
        """The labels of `labels` that the index lacks, in their order."""
        labels = list(labels)
        return [s for s, ok in zip(labels, self.lookup(labels)[1], strict=True) if not ok]

    def as_dict(self) -> dict[str, tuple[int, int]]:
        return {
            s.decode("utf-8"): (int(p), int(r))
            for s, (p, r) in zip(self.labels.tolist(), self.refs, strict=True)
        }


def _part_labels(loc: Location, number: int) -> list[str]:
    return zarr.open_group(loc.child(part_path(number)), mode="r")["labels"][:].tolist()


_CACHE: dict[str, tuple[tuple, LabelIndex]] = {}
_CACHE_LOCK = threading.Lock()


def label_index(loc: Location) -> LabelIndex:
    """The store's label index, kept per process: rebuilt only when its parts changed, extended
    by the new parts alone when parts were appended (what a later run does)."""
    parts = complete_parts(loc)
    signature = tuple(part_identity(n, a) for n, a in parts.items())
    with _CACHE_LOCK:
        old = _CACHE.get(loc.url)
        if old is not None and old[0] == signature:
            return old[1]
        if old is not None and signature[: len(old[0])] == old[0]:
            added = [(n, _part_labels(loc, n)) for n, _, _ in signature[len(old[0]) :]]
            index = old[1].extended(added)
        else:
            index = LabelIndex.build([(n, _part_labels(loc, n)) for n in parts])
        _CACHE[loc.url] = (signature, index)
        return index
