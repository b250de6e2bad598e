"""Read side: `TeacherStore` lists complete groups, streams their targets, and verifies them.

Reading streams a group front to back, reading and decoding every chunk it needs exactly once:
no per-sample random access into the groups. Samples the teacher could not process
(undecodable images) are absent from the arrays and listed in the ``missing`` attribute. In the
``table`` text layout each sample's text taps come from the store's text table (`text_table`,
memory-mapped once per node), so the per-sample API is the same for both layouts;
``text_pad="align"`` returns every position of the text tower instead of L + 1 rows.

Three ways to read a group:

* `open_samples` — the trainer's: one sample at a time as compact copies in the stored dtype
  (float16, or int8 + scales), decoded only when a batch is collated, and `GroupSamples.skip`
  passes samples by count without reading their chunks (a resumed run, issue 22);
* `iter_shard` — the same samples decoded to float32, for tools and tests;
* `iter_chunks` — a storage chunk of samples at a time, float32.

`check_sources` compares the source shards a store was cached from with the ones given.
`TeacherStore.verify` (module `verify`) checks everything and lists problems instead of raising.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store.spec import MANIFEST_NAME, STAGES_TEXT, TEXT_PADS
from clipocr.pipeline.teacher_store.store_view import StoreView
from clipocr.pipeline.teacher_store.streams import ChunkStream, Rows, TapStream, decode_rows
from clipocr.pipeline.teacher_store.text_table import TextTable
from clipocr.pipeline.teacher_store.verify import verify_store

# The per-sample entry holding the label a table-layout sample's text targets were made for.
TEXT_LABEL = "text_label"


class TeacherStore(StoreView):
    """Read side: lists complete shard groups and streams their targets in stored order.

    `table_cache`: the node-local folder the text table is unpacked into (default: see
    `table_flat.cache_root`)."""

    def __init__(self, root: str | Path, table_cache: str | Path | None = None) -> None:
        super().__init__(root)
        self.table_cache = table_cache
        self._tables: dict[bool, TextTable] = {}

    def text_table(self, all_rows: bool = False) -> TextTable:
        """The store's text table (``table`` layout); parts are mapped when first used."""
        if all_rows not in self._tables:
            self._tables[all_rows] = TextTable(self.loc, self.spec.taps, self.codec, all_rows,
                                               self.table_cache)  # fmt: skip
        return self._tables[all_rows]

    def check_text_pad(self, text_pad: str) -> None:
        """InputError unless this store can give text targets for `text_pad`."""
        if text_pad not in TEXT_PADS:
            raise InputError(f"text pad {text_pad!r}: expected one of {', '.join(TEXT_PADS)}")
        if text_pad == "align" and self.spec.text_pad != "align":
            raise InputError(
                f"{self.loc.child(MANIFEST_NAME)}: text pad align needs the pad-token features, "
                f"and this store was cached with text layout {self.spec.text_layout} / pad "
                f"{self.spec.text_pad}; re-cache with `clipocr cache-teacher --text-pad align`"
            )

    def uses_table(self) -> bool:
        return len(self.group_taps()) < len(self.spec.taps)

    def prepare(self, text_pad: str = "masked") -> None:
        """Make the text table ready (unpacked on this node, mapped) before workers start."""
        self.check_text_pad(text_pad)
        if self.uses_table():
            self.text_table(text_pad == "align").prepare()

    def open_samples(self, name: str, text_pad: str = "masked", view: int = 0) -> GroupSamples:
        """Group `name`'s samples one at a time, compact (see `GroupSamples`); image taps of
        cached view `view` (K-view stores; 0 = the clean image, every store's only view before)."""
        self.check_text_pad(text_pad)
        self.check_view(view)
        return GroupSamples(self, name, text_pad, view)

    def iter_shard(
        self, name: str, text_pad: str = "masked", view: int = 0
    ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Yield ``(key, targets)`` per sample in stored order; targets are float32 arrays
        ``image_s*`` (N, D), ``text_s*`` (L+1, D) — (P, D), every position, with
        ``text_pad="align"`` — and ``text_emb`` (E,), each the sample's own copy; plus
        ``text_label`` in the table layout (see `iter_chunks`)."""
        samples = self.open_samples(name, text_pad, view)
        for _ in range(samples.count):
            key, sample = samples.take()
            yield key, {k: v if k == TEXT_LABEL else decode_rows(v) for k, v in sample.items()}

    def iter_chunks(
        self, name: str, text_pad: str = "masked", view: int = 0
    ) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
        """Yield ``(keys, block)`` a storage chunk of samples at a time, in stored order.

        `block` holds float32 ``image_s*`` (B, N, D), ``text_emb`` (B, E), flattened ``text_s*``
        (T, D) and ``text_offsets`` (B+1,) starting at 0; a table-layout store adds
        ``text_label`` (B,), the label each sample's text rows belong to. Each chunk is read and
        decoded once. ``text_pad="align"``: every position (c1..cL, EOT, pad…) per sample instead
        of the L + 1 rows up to EOT (stores cached with ``--text-pad align`` only). `view`: the
        cached view whose image taps to read (K-view stores).
        """
        self.check_text_pad(text_pad)
        for keys, block in self.iter_group_chunks(name, view):
            refs = block.pop("text_ref", None)
            if refs is not None:
                labels, text = self.text_table(text_pad == "align").gather(refs)
                block |= text
                block[TEXT_LABEL] = np.asarray(labels, dtype=str)
            yield keys, block

    def verify(self, shard_index: dict | None = None, shard_dir: str | Path | None = None) -> dict:
        """Check every group; return a report (``ok``, per-shard problems, bytes/sample).

        See `verify.verify_store`; never raises for a problem in the store.
        """
        return verify_store(self, shard_index, shard_dir)


class GroupSamples:
    """One group's samples in stored order, each a compact copy of its own rows in the stored
    dtype (image taps, text rows, embedding; in the table layout also ``text_label``).

    Holds one decoded chunk per array at most, and only while samples are taken from it; `skip`
    passes samples by count, reading no chunk that holds only skipped samples. ``keys`` (and the
    references or text offsets) are read whole: a few bytes per sample."""

    def __init__(self, store: TeacherStore, name: str, text_pad: str, view: int = 0) -> None:
        attrs = store.complete_attrs(name)
        where = store.loc.child(name)
        group = store.open_group(name, attrs)
        self.where = where
        self.count = int(attrs["count"])
        self.keys: list[str] = ChunkStream(group["keys"], f"{where}/keys").take(self.count).tolist()
        taps = store.group_taps()
        self.table = store.text_table(text_pad == "align") if store.uses_table() else None
        self.refs = None
        if self.table is not None:
            self.refs = ChunkStream(group["text_ref"], f"{where}/text_ref").take(self.count)
        self.offsets = None
        if any(t in STAGES_TEXT for t in taps):
            arr = group["text_offsets"]
            self.offsets = ChunkStream(arr, f"{where}/text_offsets").take(self.count + 1)
        self.view = view  # the cached view whose image taps this reads (K-view stores)
        self.streams = {tap: TapStream(group, store.tap_array(tap, view), store.codec, where)
                        for tap in taps}  # fmt: skip
        self.next = 0

    def _rows(self, tap: str, a: int, b: int) -> int:
        if tap in STAGES_TEXT:
            return int(self.offsets[b] - self.offsets[a])
        return b - a

    def skip(self, n: int) -> None:
        """Pass the next `n` samples without reading them."""
        n = min(n, self.count - self.next)
        for tap, stream in self.streams.items():
            stream.skip(self._rows(tap, self.next, self.next + n))
        self.next += n

    def take(self) -> tuple[str, dict[str, Rows | str]]:
        """The next sample: ``(key, {tap: rows, …})``."""
        i = self.next
        if i >= self.count:
            raise InputError(f"{self.where}: no sample past the {self.count} its group counts")
        sample: dict[str, Rows | str] = {}
        for tap, stream in self.streams.items():
            sample[tap] = stream.take(self._rows(tap, i, i + 1)) if tap in STAGES_TEXT else (
                stream.take_one())  # fmt: skip
        if self.table is not None:
            label, text = self.table.sample(int(self.refs[i, 0]), int(self.refs[i, 1]))
            sample |= text
            sample[TEXT_LABEL] = label
        self.next += 1
        return self.keys[i], sample
