"""The label-keyed text table: text features stored once per distinct label (DESIGN §5).

CLIP's text tower is causal and sees only the label, so a sample's text taps depend on its label
alone: MJSynth draws ~9 M images from ~90 k words. In the ``table`` text layout the store keeps
the text taps once per label, in immutable *parts*, and each sample of a shard group holds a
reference ``text_ref = (part, row)``::

    ROOT/__text_table/part-000000/
        labels        (n,)          str      the distinct labels of this part
        text_s1..3    (n, P, D)     float16 | int8   every position c1..c25, EOT, pad… of the
                                             tower (P = context length − 1; SOT dropped)
        text_emb      (n, E)        float16 | int8
        <tap>_scale / <tap>_chscale          as in shard groups (int codecs)

Rows past EOT hold CLIP's pad-token features when the store was cached with ``text_pad="align"``
and zeros with ``"masked"`` (they are never used then, and zeros cost no space once compressed).

Concurrency: the caching driver collects the distinct labels of the shards to cache, writes one
part for the labels the table lacks (`TablePartWriter`, one writer, nothing shared) and only then
starts the shard tasks, which only read the table. A later run with new labels adds a part; a
part is never changed, so references stay valid; the reader unions the parts (`TextTable`), the
first part holding a label wins. Parts are published like shard groups (temporary name, then an
exclusive rename; the ``complete`` flag on object stores).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import zarr

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store.codecs import Codec
from clipocr.pipeline.teacher_store.group_writer import GroupWriter
from clipocr.pipeline.teacher_store.integrity import INDEX_COMPRESSOR, array_problems, table_shapes
from clipocr.pipeline.teacher_store.location import Location, group_attrs
from clipocr.pipeline.teacher_store.spec import INDEX_CHUNK, STAGES_IMAGE, STAGES_TEXT, TABLE_DIR

if TYPE_CHECKING:
    from clipocr.pipeline.teacher_store.writer import TeacherStoreWriter

PART_RE = re.compile(r"^part-(\d{6})$")
# Labels per chunk of a part: 64 × 26 positions ≈ a shard chunk's rows of image features.
TABLE_CHUNK = 64


def part_name(number: int) -> str:
    return f"part-{number:06d}"


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


def label_index(loc: Location) -> dict[str, tuple[int, int]]:
    """Label → (part, row) over the complete parts; the first part holding a label wins."""
    index: dict[str, tuple[int, int]] = {}
    for number in complete_parts(loc):
        labels = zarr.open_group(loc.child(f"{TABLE_DIR}/{part_name(number)}"), mode="r")
        for row, label in enumerate(labels["labels"][:].tolist()):
            index.setdefault(label, (number, row))
    return index


def table_taps(taps: Iterable[str]) -> tuple[str, ...]:
    """The taps that live in the table: everything but the image taps."""
    return tuple(t for t in taps if t not in STAGES_IMAGE)


class TablePartWriter(GroupWriter):
    """Writes one immutable part of the text table; `commit` publishes it under the next free
    part number. Open it with `open_table_part` from the caching driver (one writer at a time)."""

    def __init__(self, store: TeacherStoreWriter, positions: int, expected: int) -> None:
        taken = complete_parts(store.loc)
        self.number = max(taken, default=-1) + 1
        super().__init__(store, TABLE_DIR, part_name(self.number), {"positions": positions},
                         expected)  # fmt: skip
        self.taps = table_taps(store.spec.taps)
        self.dims = store.spec.dims
        self.positions = int(positions)
        n = max(self.expected or TABLE_CHUNK, 1)
        self.new_array("labels", (), INDEX_CHUNK, str, INDEX_COMPRESSOR, n)
        for tap in self.taps:
            row = (positions, self.dims["text"]) if tap in STAGES_TEXT else (self.dims["emb"],)
            self.new_tap(tap, row, TABLE_CHUNK, n)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return table_shapes(self.taps, self.dims, self.codec, self.count, self.positions)

    def append(self, labels: list[str], feats: dict[str, np.ndarray]) -> None:
        """Add labels and their features: ``text_s*`` ``(b, P, D)`` at every position, with rows
        past each label's EOT already as the store's ``text_pad`` wants them, ``text_emb``."""
        b = len(labels)
        if set(feats) - {"text_lengths"} != set(self.taps):
            raise ValueError(f"table part: feats keys {sorted(feats)} ≠ taps {list(self.taps)}")
        rows = {}
        for tap in self.taps:
            x = np.asarray(feats[tap])
            if x.dtype not in (np.float16, np.float32):
                x = x.astype(self.codec.input_dtype)
            want = (b, self.positions, self.dims["text"]) if tap in STAGES_TEXT else (
                b, self.dims["emb"])  # fmt: skip
            if x.shape != want:
                raise ValueError(f"table part {tap}: shape {x.shape}, expected {want}")
            rows[tap] = x
        if not b:
            return
        self.write_taps(rows, self.count)
        self._app["labels"].append(np.asarray(labels, dtype=str))
        self.count += b

    def commit(self) -> int:
        """Check and publish the part; returns its number (which `publish` may have moved on)."""
        self.finish({})
        return self.number

    def publish(self) -> None:
        loc = self.store.loc
        while True:
            try:
                loc.rename(self._dir, f"{TABLE_DIR}/{part_name(self.number)}")
                return
            except OSError:  # another run published this number first: take the next one
                if self.number not in complete_parts(loc):
                    raise
                self.number += 1


def open_table_part(store: TeacherStoreWriter, positions: int, expected: int) -> TablePartWriter:
    """A writer for the next part of `store`'s text table (`positions` rows per label)."""
    return TablePartWriter(store, positions, expected)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, s + n)`` for each (s, n)."""
    total = int(lengths.sum())
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total) - first + np.repeat(starts, lengths)


class _Part:
    """One part, read whole once and kept in its stored dtype (decoded per batch)."""

    def __init__(self, group: zarr.Group, taps: tuple[str, ...], codec: Codec, all_rows: bool):
        self.labels = group["labels"][:].tolist()
        self.lengths = np.array([len(s) + 1 for s in self.labels], np.int64)
        self.data: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.positions = 0
        for tap in taps:
            data = group[tap][:]
            if tap in STAGES_TEXT:
                self.positions = data.shape[1]
            scale = group[f"{tap}_scale"][:] if codec.has_scale else None
            ch = f"{tap}_chscale"
            chscale = group[ch][:] if codec.per_channel and ch in group else None
            if tap in STAGES_TEXT and not all_rows:  # keep only c1..cL, EOT: a third the memory
                valid = np.arange(data.shape[1])[None, :] < self.lengths[:, None]
                data = data[valid]
                scale = scale[valid] if scale is not None else None
            self.data[tap] = (data, scale, chscale)


class TextTable:
    """The union of a store's table parts, read lazily (a part when first referenced).

    `all_rows`: keep every position (for ``text_pad="align"``) instead of a label's L + 1 rows.
    Memory: a part is held in its stored dtype, e.g. MJSynth's ~90 k words at L + 1 ≈ 8 rows ×
    3 taps × 512 × 2 B ≈ 2.2 GB lossless (≈ 1.1 GB int8), 3.4× that with every position; read it
    before DataLoader workers fork and they share it.
    """

    def __init__(self, loc: Location, taps: tuple[str, ...], codec: Codec, all_rows: bool) -> None:
        self.loc = loc
        self.taps = table_taps(taps)
        self.codec = codec
        self.all_rows = all_rows
        self._parts: dict[int, _Part] = {}

    def part(self, number: int) -> _Part:
        if number not in self._parts:
            where = self.loc.child(f"{TABLE_DIR}/{part_name(number)}")
            attrs = group_attrs(self.loc, f"{TABLE_DIR}/{part_name(number)}")
            if not attrs or not attrs.get("complete"):
                raise InputError(
                    f"{where}: referenced text-table part is missing or incomplete; the store is "
                    "damaged: rerun cache-teacher into a new store"
                )
            try:
                group = zarr.open_group(where, mode="r")
                shapes = table_shapes(
                    self.taps, self._dims(group), self.codec, int(attrs["count"]),
                    int(attrs["positions"]),
                )  # fmt: skip
                problems = array_problems(group, shapes)
                part = None if problems else _Part(group, self.taps, self.codec, self.all_rows)
            except Exception as err:  # checksum mismatch, codec or I/O error
                problems = [f"unreadable ({type(err).__name__}: {err})"]
            if problems:
                raise InputError(
                    f"{where}: text-table part does not hold what it counts: "
                    f"{'; '.join(problems)}; the store is damaged: rerun cache-teacher into a new "
                    "store"
                )
            self._parts[number] = part
        return self._parts[number]

    def _dims(self, group: zarr.Group) -> dict[str, int]:
        dims = {}
        for tap in self.taps:
            key = "text" if tap in STAGES_TEXT else "emb"
            dims[key] = int(group[tap].shape[-1])
        return dims

    def gather(self, refs: np.ndarray) -> tuple[list[str], dict[str, np.ndarray]]:
        """Labels and float32 text targets of samples ``refs`` (B, 2) = (part, row): flattened
        ``text_s*`` (T, D) with ``text_offsets`` (B+1,), and ``text_emb`` (B, E)."""
        b = len(refs)
        labels: list[str] = [""] * b
        lengths = np.zeros(b, np.int64)
        by_part = {}
        for number in np.unique(refs[:, 0]).tolist():
            part = self.part(number)
            at = np.flatnonzero(refs[:, 0] == number)
            rows = refs[at, 1].astype(np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= len(part.labels)):
                raise InputError(f"{self.loc}: text reference past the end of table part {number}")
            by_part[number] = (part, at, rows)
            for i, r in zip(at.tolist(), rows.tolist(), strict=True):
                labels[i] = part.labels[r]
            lengths[at] = part.positions if self.all_rows else part.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        block: dict[str, np.ndarray] = {}
        for tap in self.taps:
            text = tap in STAGES_TEXT
            out = None
            for part, at, rows in by_part.values():
                data, scale, chscale = part.data[tap]
                if text and not self.all_rows:
                    idx = _ranges(part.offsets[rows], part.lengths[rows])
                    where = _ranges(offsets[at], lengths[at])
                else:
                    idx, where = rows, at
                rows_f = self.codec.decode(
                    data[idx], scale[idx] if scale is not None else None, chscale
                )
                if text and self.all_rows:
                    rows_f = rows_f.reshape(-1, rows_f.shape[-1])
                    where = _ranges(offsets[at], lengths[at])
                if out is None:
                    out = np.empty((int(offsets[-1]) if text else b, rows_f.shape[-1]), np.float32)
                out[where] = rows_f
            block[tap] = out
        if any(t in STAGES_TEXT for t in self.taps):
            block["text_offsets"] = offsets
        return labels, block
