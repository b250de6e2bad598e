"""Write side: `TeacherStoreWriter` creates (or checks) a store, `ShardGroupWriter` fills one group.

One writer per shard group (one task per shard), so no chunk is ever shared. On a local path a
group is written under ``.tmp-<owner id>-<name>`` and renamed to ``<name>`` by `commit`, after
its ``complete`` attribute is set, so a crash leaves nothing under a visible name. Object stores
(any fsspec URL) have no atomic rename: there the group is written under its final name and the
``complete`` attribute, written last, is the visibility criterion — readers ignore any group
without it, on every kind of storage. Rows are buffered and written a whole chunk at a time
(`_Appender`).

Overlapping runs (a rerun while a stalled run still writes) must not destroy each other's work:
each temporary group carries its writer's owner record (`ownership`), and `open_shard` removes
only groups whose writer is gone. Two live writers of one shard on a local path each fill their
own temporary group; the first `commit` publishes (the rename is exclusive), the second finds
the shard published and discards its copy. On object stores a live writer's in-place group makes
`open_shard` refuse. Before publishing, `commit` re-reads the group from storage and refuses it
unless it is still this writer's and every array holds exactly the rows counted, in chunk files
all present (`integrity`); on object stores ``overwrite`` deletes the old complete group when the
new writer opens, not when it commits.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store.codecs import CODECS, parse_codec
from clipocr.pipeline.teacher_store.integrity import (
    ARRAY_CONFIG,
    INDEX_COMPRESSOR,
    array_problems,
    checksummed,
    expected_shapes,
)
from clipocr.pipeline.teacher_store.location import (
    Location,
    group_attrs,
    tmp_name,
    tmp_owner,
)
from clipocr.pipeline.teacher_store.ownership import OwnerRecord, is_abandoned, read_owner
from clipocr.pipeline.teacher_store.spec import (
    DEFAULT_CHUNK_SAMPLES,
    INDEX_CHUNK,
    MANIFEST_NAME,
    STAGES_IMAGE,
    STAGES_TEXT,
    STORE_FORMAT,
    TEXT_ROWS_PER_SAMPLE,
    StoreSpec,
    check_group_name,
    diff_fields,
    read_manifest,
)

log = logging.getLogger(__name__)


class TeacherStoreWriter:
    """Opens (creating if needed) a store for one teacher spec; hands out per-shard writers.

    Create it once in the driver before starting workers: on object stores creating the
    manifest is not atomic, on local paths it is (concurrent creators agree or fail).
    """

    def __init__(
        self, root: str | Path, spec: StoreSpec, chunk_samples: int = DEFAULT_CHUNK_SAMPLES
    ) -> None:
        self.loc = Location(root)
        self.spec = spec
        self.codec = parse_codec(spec.codec)
        self.chunk_samples = int(chunk_samples)
        manifest = {
            "format": STORE_FORMAT,
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
                self.loc.url, mode="a", zarr_format=3, attributes={"format": STORE_FORMAT}
            )
            self.manifest = manifest
        else:
            self.manifest = read_manifest(self.loc)
            diffs = diff_fields(self.manifest, spec.identity())
            if diffs:
                raise InputError(
                    f"{self.loc.child(MANIFEST_NAME)}: store was made for another teacher setup "
                    f"(use a new store): {'; '.join(diffs)}"
                )

    @property
    def root(self) -> str:
        return self.loc.url

    def is_complete(self, shard_name: str) -> bool:
        attrs = group_attrs(self.loc, shard_name)
        return bool(attrs and attrs.get("complete"))

    def open_shard(self, shard_name: str, overwrite: bool = False) -> ShardGroupWriter:
        """A writer for one shard's group. Removes leftovers of writers that are gone (never a
        live writer's group: see the module docstring)."""
        check_group_name(shard_name)
        if self.is_complete(shard_name) and not overwrite:
            raise InputError(f"{self.loc.child(shard_name)}: already complete")
        for d in self.loc.dirs():
            if tmp_owner(d) == shard_name:
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
        return ShardGroupWriter(self, shard_name, overwrite)


class _Appender:
    """Buffers rows of one growing array and writes them a whole chunk at a time."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.chunk = array.chunks[0]
        self.parts: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0

    def append(self, rows: np.ndarray) -> None:
        if len(rows):
            self.parts.append(rows)
            self.buffered += len(rows)
        if self.buffered >= self.chunk:
            self._flush(final=False)

    def close(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        if not self.parts:
            return
        data = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        n = len(data) if final else len(data) // self.chunk * self.chunk
        if n:
            end = self.written + n
            self.array.resize((end, *self.array.shape[1:]))
            self.array[self.written : end] = data[:n]
            self.written = end
        rest = data[n:]
        self.parts = [rest] if len(rest) else []
        self.buffered = len(rest)


class ShardGroupWriter:
    """Streams one shard's targets into its group; `commit` publishes it, `abort` drops it.

    Memory: at most about one chunk (+ the batch being appended) per array.
    """

    def __init__(self, store: TeacherStoreWriter, name: str, overwrite: bool = False) -> None:
        self.store = store
        self.name = name
        self.overwrite = overwrite
        self.codec = store.codec
        self.taps = store.spec.taps
        self.dims = store.spec.dims
        loc = store.loc
        self.owner = OwnerRecord.mine(uuid.uuid4().hex)
        self._dir = tmp_name(self.owner.id, name) if loc.local else name
        self.group = zarr.open_group(
            loc.child(self._dir),
            mode="w",
            zarr_format=3,
            attributes={
                "format": STORE_FORMAT,
                "shard": name,
                "codec": self.codec.name,
                "chunk_samples": store.chunk_samples,
                "complete": False,
                **self.owner.as_attrs(),
            },
        )
        self.count = 0
        self.text_rows = 0
        self._done = False
        self._calibrated = False
        self._chscale: dict[str, np.ndarray | None] = {}
        self._app: dict[str, _Appender] = {}
        self._make_arrays()

    # -- layout ------------------------------------------------------------------------------
    def _row_shape(self, tap: str) -> tuple[int, ...]:
        if tap in STAGES_IMAGE:
            return (self.dims["image_tokens"], self.dims["image"])
        return (self.dims["text"],) if tap in STAGES_TEXT else (self.dims["emb"],)

    def _new(self, name: str, shape: tuple[int, ...], chunk: int, dtype: Any, comp: Any) -> None:
        arr = self.group.create_array(
            name,
            shape=(0, *shape),
            chunks=(chunk, *shape),
            dtype=dtype,
            fill_value="" if dtype is str else 0,
            compressors=checksummed(comp),
            config=ARRAY_CONFIG,
        )
        self._app[name] = _Appender(arr)

    def _make_arrays(self) -> None:
        cs = self.store.chunk_samples
        self._new("keys", (), INDEX_CHUNK, str, INDEX_COMPRESSOR)
        if any(t in STAGES_TEXT for t in self.taps):
            self._new("text_offsets", (), INDEX_CHUNK, np.int64, INDEX_COMPRESSOR)
            self._app["text_offsets"].append(np.zeros(1, np.int64))
        for tap in self.taps:
            chunk = cs * TEXT_ROWS_PER_SAMPLE if tap in STAGES_TEXT else cs
            row = self._row_shape(tap)
            self._new(tap, row, chunk, self.codec.dtype, self.codec.compressor())
            if self.codec.has_scale:
                self._new(f"{tap}_scale", row[:-1], chunk, np.float32, self.codec.compressor())

    # -- writing -----------------------------------------------------------------------------
    def _rows(self, tap: str, feats: dict, b: int) -> np.ndarray:
        x = np.asarray(feats[tap], dtype=np.float32)
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

    def append(self, keys: list[str], feats: dict[str, np.ndarray]) -> None:
        """Add a batch: ``keys`` (b,) and float features per tap (see the module docstring).

        Text stages come padded (b, Lmax+1, D) with ``feats["text_lengths"]`` (b,) = L+1; only
        the valid rows are stored. Inputs must be CPU arrays (torch: ``.float().cpu().numpy()``).
        """
        if self._done:
            raise RuntimeError(f"{self.name}: append after commit/abort")
        b = len(keys)
        unknown = set(feats) - set(self.taps) - {"text_lengths"}
        absent = set(self.taps) - set(feats)
        if unknown or absent:
            raise ValueError(f"{self.name}: feats keys {sorted(feats)} ≠ taps {list(self.taps)}")
        feats = dict(feats)
        has_text = any(t in STAGES_TEXT for t in self.taps)
        if has_text:
            lengths = np.asarray(feats["text_lengths"], dtype=np.int64).reshape(-1)
            if lengths.shape != (b,) or (b and lengths.min() < 1):
                raise ValueError(f"{self.name}: text_lengths must be (b,) ints >= 1")
            feats["_lengths"] = lengths
        rows = {tap: self._rows(tap, feats, b) for tap in self.taps}
        if not b:
            return
        self.owner.beat_if_due(self.group)
        if not self._calibrated:
            self._calibrate(rows)
        for tap, x in rows.items():
            bad = x.size - int(np.isfinite(x).sum())
            if bad:
                log.warning(
                    "%s: %s has %d non-finite values in batch at %d",
                    self.name,
                    tap,
                    bad,
                    self.count,
                )
            data, scale = self.codec.encode(x, self._chscale[tap])
            self._app[tap].append(data)
            if scale is not None:
                self._app[f"{tap}_scale"].append(scale)
        self._app["keys"].append(np.asarray([str(k) for k in keys], dtype=str))
        if has_text:
            ends = self.text_rows + np.cumsum(feats["_lengths"])
            self._app["text_offsets"].append(ends)
            self.text_rows = int(ends[-1])
        self.count += b

    def _calibrate(self, rows: dict[str, np.ndarray]) -> None:
        """Fix the shard's per-channel scales from its first batch (int "-channel" codecs)."""
        for tap, x in rows.items():
            scale = self.codec.calibrate(x)
            self._chscale[tap] = scale
            if scale is not None:
                arr = self.group.create_array(
                    f"{tap}_chscale",
                    shape=scale.shape,
                    dtype=np.float32,
                    compressors=checksummed(),
                    config=ARRAY_CONFIG,
                )
                arr[:] = scale
        self._calibrated = True

    def commit(self, missing: Iterable[str] = (), source: dict | None = None) -> int:
        """Flush, check, mark complete and publish the group; ``missing`` = keys the teacher
        skipped, ``source`` = the source shard's digest (`sources.shard_digest`), if known.

        Returns the number of samples stored. Publishes nothing and raises RuntimeError when the
        group on storage is no longer this writer's or does not hold what it counted.
        """
        if self._done:
            raise RuntimeError(f"{self.name}: already committed or aborted")
        for app in self._app.values():
            app.close()
        self._check_before_publish()
        attrs = {"count": self.count, "text_rows": self.text_rows, "missing": [*map(str, missing)]}
        if source is not None:
            attrs["source"] = source
        self.group.attrs.update(attrs)
        self.group.attrs["complete"] = True  # written last: the object-store visibility flag
        if self.store.loc.local:
            self._publish()
        self._done = True
        return self.count

    def _check_before_publish(self) -> None:
        loc = self.store.loc
        owner = read_owner(loc, self._dir)
        if owner is None or owner.id != self.owner.id:
            problems = ["its group was removed or taken over by another writer meanwhile"]
        else:
            group = zarr.open_group(loc.child(self._dir), mode="r")
            shapes = expected_shapes(self.taps, self.dims, self.codec, self.count, self.text_rows)
            problems = array_problems(group, shapes)
        if problems:
            self._done = True
            if loc.local or (owner is not None and owner.id == self.owner.id):
                loc.remove(self._dir)  # ours alone (a temporary name holds this writer's id)
            raise RuntimeError(f"{loc.child(self.name)}: not published: {'; '.join(problems)}")

    def _publish(self) -> None:
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

    def abort(self) -> None:
        """Drop everything written so far (nothing becomes visible)."""
        if not self._done:
            self._done = True
            self.store.loc.remove(self._dir)

    def __enter__(self) -> ShardGroupWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if not self._done:
            if exc_type is None:
                log.warning("%s: closed without commit(); discarding it", self.name)
            self.abort()
