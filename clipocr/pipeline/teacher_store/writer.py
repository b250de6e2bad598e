"""Write side: `TeacherStoreWriter` creates (or checks) a store, `ShardGroupWriter` fills one group.

One writer per shard group (one task per shard), so no chunk is ever shared. On a local path a
group is written under ``.tmp-<owner id>-<name>`` and renamed to ``<name>`` by `commit`, after
its ``complete`` attribute is set, so a crash leaves nothing under a visible name. Object stores
(any fsspec URL) have no atomic rename: there the group is written under its final name and the
``complete`` attribute, written last, is the visibility criterion — readers ignore any group
without it, on every kind of storage. Rows are buffered and written a whole chunk at a time
into arrays allocated for the count the caller expects (`group_writer`, which also says why).

Overlapping runs (a rerun while a stalled run still writes) must not destroy each other's work:
each temporary group carries its writer's owner record (`ownership`), and `open_shard` removes
only groups whose writer is gone. Two live writers of one shard on a local path each fill their
own temporary group; the first `commit` publishes (the rename is exclusive), the second finds
the shard published and discards its copy. On object stores a live writer's in-place group makes
`open_shard` refuse. Before publishing, `commit` re-reads the group from storage and refuses it
unless it is still this writer's and every array holds exactly the rows counted, in chunk files
all present (`integrity`); on object stores ``overwrite`` deletes the old complete group when the
new writer opens, not when it commits.

Text layouts (`spec.TEXT_LAYOUTS`): in the ``table`` layout a shard group stores its image taps
and, per sample, a reference ``text_ref = (part, row)`` into the store's text table, which holds
the text taps once per distinct label and is written before the shards (`text_table`). The
writer looks each sample's label up in the store's label index (`table_parts.label_index`, kept
per process); the labels come batch by batch (`ShardGroupWriter.give_labels`, as the runner reads
the shard) or as a key → label mapping when the group is opened.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store.codecs import CODECS, parse_codec
from clipocr.pipeline.teacher_store.group_writer import GroupWriter, shared_pool
from clipocr.pipeline.teacher_store.integrity import INDEX_COMPRESSOR, expected_shapes
from clipocr.pipeline.teacher_store.location import Location, group_attrs, tmp_name
from clipocr.pipeline.teacher_store.ownership import is_abandoned, read_owner
from clipocr.pipeline.teacher_store.spec import (
    DEFAULT_CHUNK_SAMPLES,
    FORMAT_1,
    INDEX_CHUNK,
    MANIFEST_NAME,
    STAGES_IMAGE,
    STAGES_TEXT,
    TEXT_ROWS_PER_SAMPLE,
    StoreSpec,
    check_group_name,
    diff_fields,
    read_manifest,
    view_tap,
)
from clipocr.pipeline.teacher_store.table_parts import LabelIndex, label_index

log = logging.getLogger(__name__)


class TeacherStoreWriter:
    """Opens (creating if needed) a store for one teacher spec; hands out per-shard writers.

    Create it once in the driver before starting workers: on object stores creating the
    manifest is not atomic, on local paths it is (concurrent creators agree or fail).

    `encode_threads`: taps encoded side by side (default: the cores this process may use, at
    most 4; 1 = in the calling thread).
    """

    def __init__(
        self,
        root: str | Path,
        spec: StoreSpec,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
        encode_threads: int | None = None,
    ) -> None:
        self.loc = Location(root)
        self.spec = spec
        self.codec = parse_codec(spec.codec)
        self.chunk_samples = int(chunk_samples)
        if encode_threads is None:
            encode_threads = min(4, len(os.sched_getaffinity(0)))
        self.encode_threads = max(int(encode_threads), 1)
        self._index: LabelIndex | None = None
        manifest = {
            "format": spec.store_format,
            **spec.to_dict(),
            "storage": {
                "dtype": str(self.codec.dtype),
                "scale_dtype": "float32" if self.codec.has_scale else None,
                "codec": CODECS.get(spec.codec, spec.codec),
                "counts": "per shard group: attributes count / missing / complete",
            },
        }
        if self.loc.create_text(MANIFEST_NAME, json.dumps(manifest, indent=2)):
            zarr.open_group(
                self.loc.url, mode="a", zarr_format=3, attributes={"format": spec.store_format}
            )
            self.manifest = manifest
        else:
            self.manifest = read_manifest(self.loc)
            if self.manifest["format"] == FORMAT_1:
                raise InputError(
                    f"{self.loc.child(MANIFEST_NAME)}: cached by an older clipocr (format 1, "
                    "text rows per shard); training still reads it, but new shards go into a new "
                    "store: rerun cache-teacher with another --out"
                )
            self._check_views()
            diffs = diff_fields(self.manifest, spec.identity())
            if diffs:
                raise InputError(
                    f"{self.loc.child(MANIFEST_NAME)}: store was made for another teacher setup "
                    f"(use a new store): {'; '.join(diffs)}"
                )

    def _check_views(self) -> None:
        """Refuse to add groups of another view count or augmentation to an existing store:
        a K-view store's groups must all hold the same views (issue 19)."""
        have = dict(self.manifest.get("views") or {})
        have.pop("probe", None)
        want = self.spec.identity().get("views", {})
        if have == want:
            return
        where = self.loc.child(MANIFEST_NAME)
        k_have, k_want = int(have.get("count", 1)), int(want.get("count", 1))
        if k_have != k_want:
            raise InputError(
                f"{where}: store holds {k_have} cached view(s) per sample, this run caches "
                f"{k_want} (--views): use a new store, or the store's --views"
            )
        diffs = diff_fields(have, want, "views")
        raise InputError(
            f"{where}: store's views were made otherwise (use a new store): {'; '.join(diffs[:3])}"
            + (f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else "")
        )

    @property
    def root(self) -> str:
        return self.loc.url

    def is_complete(self, shard_name: str) -> bool:
        attrs = group_attrs(self.loc, shard_name)
        return bool(attrs and attrs.get("complete"))

    def pool(self) -> ThreadPoolExecutor | None:
        """The threads that encode taps side by side (None: encode in the calling thread)."""
        return shared_pool(self.encode_threads) if self.encode_threads > 1 else None

    def text_index(self, refresh: bool = False) -> LabelIndex:
        """Label → (table part, row) over the store's complete text-table parts (kept per
        process across writers: `table_parts.label_index`)."""
        if self._index is None or refresh:
            self._index = label_index(self.loc)
        return self._index

    def open_shard(
        self,
        shard_name: str,
        overwrite: bool = False,
        expected: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ShardGroupWriter:
        """A writer for one shard's group. Removes leftovers of writers that are gone (never a
        live writer's group: see the module docstring).

        `expected`: the shard's sample count (``shards.json``), to allocate arrays once;
        `labels`: key → label of the shard's samples, for the ``table`` text layout (or give
        them batch by batch: `ShardGroupWriter.give_labels`).

        Finds this shard's temporary groups by name (`Location.tmp_groups`: one listing of
        names, no per-entry I/O; object stores have none), not by reading every group."""
        check_group_name(shard_name)
        if self.is_complete(shard_name) and not overwrite:
            raise InputError(f"{self.loc.child(shard_name)}: already complete")
        for d in self.loc.tmp_groups(shard_name):
            if is_abandoned(self.loc, d):
                self.loc.remove(d)
            else:
                log.info("%s: another live writer is caching this shard too", d)
        if self.loc.exists(shard_name) and not self.is_complete(shard_name):
            # an incomplete group under the final name (object store)
            if not is_abandoned(self.loc, shard_name):
                owner = read_owner(self.loc, shard_name)
                who = f"pid {owner.pid} on {owner.host}" if owner else "a writer"
                raise InputError(
                    f"{self.loc.child(shard_name)}: being written by {who}, still alive; "
                    "stop that run or wait for it"
                )
            self.loc.remove(shard_name)
        return ShardGroupWriter(self, shard_name, overwrite, expected, labels)


class ShardGroupWriter(GroupWriter):
    """Streams one shard's targets into its group; `commit` publishes it, `abort` drops it.

    Memory: at most about one chunk (+ the batch being appended) per array.
    """

    def __init__(
        self,
        store: TeacherStoreWriter,
        name: str,
        overwrite: bool = False,
        expected: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(store, "", name, {"shard": name}, expected)
        self.overwrite = overwrite
        self.taps = store.spec.taps
        self.dims = store.spec.dims
        self.layout = store.spec.text_layout
        table = self.layout == "table"
        taps = tuple(t for t in self.taps if t in STAGES_IMAGE) if table else self.taps
        self.refs = table and len(taps) < len(self.taps)
        # K-view store: each image tap once per view (`view_tap`), after view 0's taps
        views = store.spec.view_count
        self._base = {view_tap(t, v): t for v in range(1, views) for t in taps if t in STAGES_IMAGE}
        self.group_taps = taps + tuple(self._base)
        self.labels: dict[str, str] = dict(labels or {})
        self.text_rows = 0
        self._make_arrays()

    # -- layout ------------------------------------------------------------------------------
    def _row_shape(self, tap: str) -> tuple[int, ...]:
        tap = self._base.get(tap, tap)
        if tap in STAGES_IMAGE:
            return (self.dims["image_tokens"], self.dims["image"])
        return (self.dims["text"],) if tap in STAGES_TEXT else (self.dims["emb"],)

    def _make_arrays(self) -> None:
        cs = self.store.chunk_samples
        n = self.expected if self.expected is not None else cs
        self.new_array("keys", (), INDEX_CHUNK, str, INDEX_COMPRESSOR, max(n, 1))
        if self.refs:
            self.new_array("text_ref", (2,), INDEX_CHUNK, np.int32, INDEX_COMPRESSOR, max(n, 1))
        if any(t in STAGES_TEXT for t in self.group_taps):
            self.new_array("text_offsets", (), INDEX_CHUNK, np.int64, INDEX_COMPRESSOR, n + 1)
            self._app["text_offsets"].append(np.zeros(1, np.int64))
        for tap in self.group_taps:
            per = TEXT_ROWS_PER_SAMPLE if tap in STAGES_TEXT else 1  # ragged text: rows/sample
            self.new_tap(tap, self._row_shape(tap), cs * per, n * per)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_shapes(self.taps, self.dims, self.codec, self.count, self.text_rows,
                               self.layout, self.store.spec.view_count)  # fmt: skip

    # -- writing -----------------------------------------------------------------------------
    def _rows(self, tap: str, feats: dict, b: int) -> np.ndarray:
        x = np.asarray(feats[tap])
        if x.dtype not in (np.float16, np.float32):
            x = x.astype(self.codec.input_dtype)
        if tap in STAGES_TEXT:
            lengths = feats["_lengths"]
            if x.ndim != 3 or x.shape[0] != b or x.shape[2] != self.dims["text"]:
                raise ValueError(
                    f"{tap}: shape {x.shape}, expected ({b}, Lmax+1, {self.dims['text']})"
                )
            if lengths.max(initial=0) > x.shape[1]:
                raise ValueError(f"{tap}: text_lengths exceed the padded length {x.shape[1]}")
            return x[np.arange(x.shape[1])[None, :] < lengths[:, None]]
        want = (b, *self._row_shape(tap))
        if x.shape != want:
            raise ValueError(f"{tap}: shape {x.shape}, expected {want}")
        return x

    def give_labels(self, keys: list[str], labels: list[str]) -> None:
        """The labels of samples about to be appended (table layout), batch by batch as the
        shard is read: no pass over the shard's labels before caching it (issue 22)."""
        self.labels.update(zip(keys, labels, strict=True))

    def _text_refs(self, keys: list[str]) -> np.ndarray:
        labels = [self.labels.pop(key, None) for key in keys]
        if None in labels:
            key = keys[labels.index(None)]
            raise ValueError(f"{self.name}: no label given for sample {key} (table layout)")
        refs, found = self.store.text_index().lookup(labels)
        if not found.all():  # a part published since the index was read
            refs, found = self.store.text_index(refresh=True).lookup(labels)
        if not found.all():
            i = int(np.flatnonzero(~found)[0])
            raise InputError(
                f"{self.store.loc.child(self.name)}: label {labels[i]!r} of {keys[i]} is not in "
                "the store's text table; run cache-teacher (it fills the table first)"
            )
        return refs

    def append(self, keys: list[str], feats: dict[str, np.ndarray]) -> None:
        """Add a batch: ``keys`` (b,) and features per tap (see the module docstring), float16
        or float32 (float16 is stored as it came by the lossless codec).

        Ragged layout: text stages come padded (b, Lmax+1, D) with ``feats["text_lengths"]``
        (b,) = L+1; only the valid rows are stored. Table layout: only the image taps (text
        comes from the table). Inputs must be CPU arrays (torch: ``.cpu().numpy()``).
        """
        if self._done:
            raise RuntimeError(f"{self.name}: append after commit/abort")
        b = len(keys)
        unknown = set(feats) - set(self.group_taps) - {"text_lengths"}
        absent = set(self.group_taps) - set(feats)
        if unknown or absent:
            raise ValueError(
                f"{self.name}: feats keys {sorted(feats)} ≠ taps {list(self.group_taps)}"
            )
        feats = dict(feats)
        has_text = any(t in STAGES_TEXT for t in self.group_taps)
        if has_text:
            lengths = np.asarray(feats["text_lengths"], dtype=np.int64).reshape(-1)
            if lengths.shape != (b,) or (b and lengths.min() < 1):
                raise ValueError(f"{self.name}: text_lengths must be (b,) ints >= 1")
            feats["_lengths"] = lengths
        rows = {tap: self._rows(tap, feats, b) for tap in self.group_taps}
        if not b:
            return
        refs = self._text_refs(keys) if self.refs else None
        self.write_taps(rows, self.count)
        self._app["keys"].append(np.asarray([str(k) for k in keys], dtype=str))
        if refs is not None:
            self._app["text_ref"].append(refs)
        if has_text:
            ends = self.text_rows + np.cumsum(feats["_lengths"])
            self._app["text_offsets"].append(ends)
            self.text_rows = int(ends[-1])
        self.count += b

    def commit(self, missing: Iterable[str] = (), source: dict | None = None) -> int:
        """Flush, check, mark complete and publish the group; ``missing`` = keys the teacher
        skipped, ``source`` = the source shard's digest (`sources.shard_digest`), if known.

        Returns the number of samples stored. Publishes nothing and raises RuntimeError when the
        group on storage is no longer this writer's or does not hold what it counted.
        """
        attrs: dict[str, Any] = {"text_rows": self.text_rows, "missing": [*map(str, missing)]}
        if source is not None:
            attrs["source"] = source
        self.finish(attrs)
        return self.count

    def publish(self) -> None:
        """Rename the temporary group into place (exclusive unless `overwrite`)."""
        loc = self.store.loc
        if self.overwrite and loc.exists(self.name):
            trash = tmp_name(uuid.uuid4().hex, self.name)
            loc.rename(self.name, trash)
            loc.rename(self._dir, self.name)
            loc.remove(trash)
            return
        try:
            loc.rename(self._dir, self.name)  # fails if another writer published first
        except OSError:
            if not self.store.is_complete(self.name):
                raise
            log.warning("%s: published meanwhile by another writer; copy dropped", self.name)
            loc.remove(self._dir)

    def __enter__(self) -> ShardGroupWriter:
        return self
