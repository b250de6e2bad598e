"""The label-keyed text table, read side: text features once per distinct label (DESIGN §5).

CLIP's text tower is causal and sees only the label, so a sample's text taps depend on its label
alone: MJSynth draws ~9 M images from ~90 k words. In the ``table`` text layout the store keeps
the text taps once per label, in immutable *parts* (written by `table_writer`), and each sample
of a shard group holds a reference ``text_ref = (part, row)``::

    ROOT/__text_table/part-000000/
        labels        (n,)          str      the distinct labels of this part
        text_s1..3    (n, P, D)     float16 | int8   every position c1..c25, EOT, pad… of the
                                             tower (P = context length − 1; SOT dropped)
        text_emb      (n, E)        float16 | int8
        <tap>_scale / <tap>_chscale          as in shard groups (int codecs)

Rows past EOT hold CLIP's pad-token features when the store was cached with ``text_pad="align"``
and zeros with ``"masked"`` (they are never used then, and zeros cost no space once compressed).
The reader unions the parts (`TextTable`), the first part holding a label wins.

Memory (issue 22): a part is never read whole into a process. It is unpacked once per node into
memory-mapped files (`table_flat`), and each sample copies out only its own label's rows, so
the table costs a process the pages of the labels it touches, shared with every other process
of the node through the page cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store.codecs import Codec
from clipocr.pipeline.teacher_store.integrity import array_problems, table_shapes
from clipocr.pipeline.teacher_store.location import Location, group_attrs
from clipocr.pipeline.teacher_store.spec import STAGES_TEXT, TABLE_DIR
from clipocr.pipeline.teacher_store.streams import Rows, decode_rows
from clipocr.pipeline.teacher_store.table_flat import FlatPart, cache_root
from clipocr.pipeline.teacher_store.table_parts import complete_parts, part_path, table_taps


class TextTable:
    """The union of a store's table parts; a part is unpacked (once per node) and mapped when
    first referenced. `all_rows`: every position (``text_pad="align"``) instead of a label's
    L + 1 rows. `cache`: where unpacked parts live (`table_flat.cache_root`)."""

    def __init__(self, loc: Location, taps: tuple[str, ...], codec: Codec, all_rows: bool,
                 cache: str | Path | None = None) -> None:  # fmt: skip
        self.loc = loc
        self.taps = table_taps(taps)
        self.codec = codec
        self.all_rows = all_rows
        self.cache = cache_root(cache)
        self._parts: dict[int, FlatPart] = {}

    def part(self, number: int) -> FlatPart:
        if number not in self._parts:
            attrs = group_attrs(self.loc, part_path(number))
            if not attrs or not attrs.get("complete"):
                raise InputError(
                    f"{self.loc.child(part_path(number))}: referenced text-table part is missing "
                    "or incomplete; the store is damaged: rerun cache-teacher into a new store"
                )
            self._parts[number] = FlatPart(self.loc, number, attrs, self.taps, self.codec,
                                           self.all_rows, self.cache)  # fmt: skip
        return self._parts[number]

    def prepare(self) -> None:
        """Unpack and map every complete part now (before DataLoader workers start)."""
        for number in complete_parts(self.loc):
            self.part(number).arrays()

    def sample(self, part: int, row: int) -> tuple[str, dict[str, Rows]]:
        """The label at (part, row) and its text rows per tap, as compact copies."""
        flat = self.part(part)
        if not 0 <= row < flat.count:
            raise InputError(f"{self.loc}: text reference past the end of table part {part}")
        return flat.label(row), flat.sample(row)

    def gather(self, refs: np.ndarray) -> tuple[list[str], dict[str, np.ndarray]]:
        """Labels and float32 text targets of samples ``refs`` (B, 2) = (part, row): flattened
        ``text_s*`` (T, D) with ``text_offsets`` (B+1,), and ``text_emb`` (B, E)."""
        labels, rows = [], []
        for p, r in np.asarray(refs).tolist():
            label, feats = self.sample(p, r)
            labels.append(label)
            rows.append(feats)
        block: dict[str, np.ndarray] = {}
        for tap in self.taps:
            parts = [decode_rows(f[tap]) for f in rows] or [np.empty((0, 0), np.float32)]
            if tap in STAGES_TEXT:
                lengths = [len(x) for x in parts] if rows else []
                block["text_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
                block[tap] = np.concatenate(parts)
            else:
                block[tap] = np.stack(parts) if rows else parts[0]
        return labels, block


def check_part(loc: Location, number: int, attrs: dict, taps: tuple[str, ...],
               codec: Codec) -> list[str]:  # fmt: skip
    """Problems of one complete part (`TeacherStore.verify`): shapes and chunk files, every
    chunk decoded (its CRC32C checked) and scanned for NaN/Inf, duplicate labels. Reads a chunk
    at a time, never the part whole."""
    where = f"{TABLE_DIR} part {number}"
    taps = table_taps(taps)
    try:
        group = zarr.open_group(loc.child(part_path(number)), mode="r")
        dims = {("text" if t in STAGES_TEXT else "emb"): int(group[t].shape[-1]) for t in taps}
        problems = array_problems(group, table_shapes(taps, dims, codec, int(attrs["count"]),
                                                      int(attrs["positions"])))  # fmt: skip
    except Exception as err:
        return [f"{where}: unreadable ({type(err).__name__}: {err})"]
    if problems:
        return [f"{where}: {p}" for p in problems]
    out = []
    try:
        labels = group["labels"][:].tolist()
        if len(set(labels)) != len(labels):
            out.append(f"{where}: labels: duplicates")
        for tap in taps:
            arr, bad = group[tap], 0
            step = int(arr.chunks[0])
            for a in range(0, arr.shape[0], step):
                b = min(a + step, arr.shape[0])
                scale = group[f"{tap}_scale"][a:b] if codec.has_scale else None
                ch = f"{tap}_chscale"
                chscale = group[ch][:] if codec.per_channel and ch in group else None
                x = codec.decode(arr[a:b], scale, chscale)
                bad += int(x.size - np.isfinite(x).sum())
            if bad:
                out.append(f"{where}: {tap}: {bad} NaN/Inf values")
    except Exception as err:  # checksum mismatch, codec or I/O error
        out.append(f"{where}: unreadable ({type(err).__name__}: {err})")
    return out
