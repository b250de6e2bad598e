"""What every unpublished group has in common: preallocated arrays filled a chunk at a time, taps
encoded in parallel, and a commit that checks the group on storage before publishing it.

`GroupWriter` is the base of `ShardGroupWriter` (one source shard's samples) and
`TablePartWriter` (one part of the label-keyed text table). Both fill one Zarr group that only
their writer touches, under a temporary name on local paths (renamed by `commit`) or under its
final name with ``complete`` written last on object stores; see `writer` for the rules.

Why it is shaped this way (issue 14, measured with ``bench/bench_cache.py --teacher null``): the
writer had to keep up with a GPU teacher. Arrays are created at the item count the caller
expects (``shards.json`` knows it) and shrunk once at commit if fewer came, instead of one
``resize`` — a metadata rewrite — per chunk; without a count they grow geometrically. Features
stay in the dtype they came in when the codec stores that dtype (float16 lossless: no float32
round trip). Each tap is encoded, compressed and written by its own task in a small thread pool
(numpy, Blosc and file writes release the GIL), so the taps of a batch are written side by side.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import zarr

from clipocr.pipeline.teacher_store.codecs import Codec, count_nonfinite
from clipocr.pipeline.teacher_store.integrity import ARRAY_CONFIG, array_problems, checksummed
from clipocr.pipeline.teacher_store.location import Location, tmp_name
from clipocr.pipeline.teacher_store.ownership import OwnerRecord, read_owner
from clipocr.pipeline.teacher_store.spec import StoreSpec

log = logging.getLogger(__name__)


class StoreHandle(Protocol):
    """What a group writer needs of the store it writes into (`writer.TeacherStoreWriter` is
    one). A protocol, so this module and the writers built on it never import `writer`."""

    loc: Location
    spec: StoreSpec
    codec: Codec
    chunk_samples: int

    def pool(self) -> ThreadPoolExecutor | None: ...


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: it starts pools (and a lock) anew."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def shared_pool(threads: int) -> ThreadPoolExecutor:
    """One encoding pool of `threads` per process, shared by every writer: a dask worker opens
    thousands of shard writers, which must not each leave threads behind."""
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="store-encode")
        return _POOLS[threads]


class Appender:
    """Buffers rows of one array and writes them a whole chunk at a time into space allocated
    ahead (`capacity` rows), growing it geometrically when more come; `close` trims it."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.chunk = array.chunks[0]
        self.capacity = array.shape[0]
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
        """Write what is buffered and trim the array to the rows written (one resize, if any)."""
        self._flush(final=True)
        if self.capacity != self.written:
            self.array.resize((self.written, *self.array.shape[1:]))
            self.capacity = self.written

    def _flush(self, final: bool) -> None:
        if not self.parts:
            return
        data = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        n = len(data) if final else len(data) // self.chunk * self.chunk
        if n:
            end = self.written + n
            if end > self.capacity:
                self.capacity = max(end, 2 * self.capacity)
                self.array.resize((self.capacity, *self.array.shape[1:]))
            self.array[self.written : end] = data[:n]
            self.written = end
        rest = data[n:]
        self.parts = [rest] if len(rest) else []
        self.buffered = len(rest)


class GroupWriter:
    """One group's arrays, filled by this writer alone; `commit` checks and publishes it.

    Subclasses say where the group lives (`parent`, `name`), which arrays it has and what shape
    each must have at commit (`expected_shapes`).
    """

    def __init__(
        self,
        store: StoreHandle,
        parent: str,
        name: str,
        attrs: dict[str, Any],
        expected: int | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.codec = store.codec
        self.expected = max(int(expected), 0) if expected is not None else None
        self.owner = OwnerRecord.mine(uuid.uuid4().hex)
        self.parent = parent
        self.final = f"{parent}/{name}" if parent else name
        temp = tmp_name(self.owner.id, name)
        self._dir = (f"{parent}/{temp}" if parent else temp) if store.loc.local else self.final
        self.group = zarr.open_group(
            store.loc.child(self._dir),
            mode="w",
            zarr_format=3,
            attributes={
                "format": store.spec.store_format,
                "codec": self.codec.name,
                "chunk_samples": store.chunk_samples,
                "complete": False,
                **attrs,
                **self.owner.as_attrs(),
            },
        )
        self.count = 0
        self._done = False
        self._calibrated = False
        self._chscale: dict[str, np.ndarray | None] = {}
        self._app: dict[str, Appender] = {}

    # -- layout ------------------------------------------------------------------------------
    def new_array(
        self, name: str, row: tuple[int, ...], chunk: int, dtype: Any, comp: Any, capacity: int
    ) -> None:
        """A growable array of rows `row`, allocated for `capacity` rows."""
        arr = self.group.create_array(
            name,
            shape=(capacity, *row),
            chunks=(chunk, *row),
            dtype=dtype,
            fill_value="" if dtype is str else 0,
            compressors=checksummed(comp),
            config=ARRAY_CONFIG,
        )
        self._app[name] = Appender(arr)

    def new_tap(self, tap: str, row: tuple[int, ...], chunk: int, capacity: int) -> None:
        """A tap's data array, and its per-row scales where the codec has them."""
        self.new_array(tap, row, chunk, self.codec.dtype, self.codec.compressor(), capacity)
        if self.codec.has_scale:
            comp = self.codec.compressor()
            self.new_array(f"{tap}_scale", row[:-1], chunk, np.float32, comp, capacity)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    # -- writing -----------------------------------------------------------------------------
    def write_taps(self, rows: dict[str, np.ndarray], where: int) -> None:
        """Encode each tap's rows and append them, the taps side by side in the store's pool.

        `where` (the first item's index) only names the batch in a non-finite warning."""
        self.owner.beat_if_due(self.group)
        if not self._calibrated:
            self._calibrate(rows)
        self._parallel([lambda t=t, x=x: self._write_tap(t, x, where) for t, x in rows.items()])

    def _write_tap(self, tap: str, x: np.ndarray, where: int) -> None:
        bad = count_nonfinite(x)
        if bad:
            log.warning("%s: %s has %d non-finite values in batch at %d", self.name, tap, bad,
                        where)  # fmt: skip
        data, scale = self.codec.encode(x, self._chscale[tap])
        self._app[tap].append(data)
        if scale is not None:
            self._app[f"{tap}_scale"].append(scale)

    def _parallel(self, jobs: list[Callable[[], None]]) -> None:
        pool: ThreadPoolExecutor | None = self.store.pool()
        if pool is None or len(jobs) < 2:
            for job in jobs:
                job()
            return
        for future in [pool.submit(job) for job in jobs]:
            future.result()  # re-raises a job's exception here

    def _calibrate(self, rows: dict[str, np.ndarray]) -> None:
        """Fix the group's per-channel scales from its first batch (int "-channel" codecs)."""
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

    # -- publishing --------------------------------------------------------------------------
    def finish(self, attrs: dict[str, Any]) -> None:
        """Flush and trim every array, check the group on storage, record `attrs`, mark it
        complete and publish it (RuntimeError, nothing published, when the check fails)."""
        if self._done:
            raise RuntimeError(f"{self.name}: already committed or aborted")
        self._parallel([app.close for app in self._app.values()])
        self._check_before_publish()
        self.group.attrs.update({"count": self.count, **attrs})
        self.group.attrs["complete"] = True  # written last: the object-store visibility flag
        if self.store.loc.local:
            self.publish()
        self._done = True

    def _check_before_publish(self) -> None:
        loc = self.store.loc
        owner = read_owner(loc, self._dir)
        if owner is None or owner.id != self.owner.id:
            problems = ["its group was removed or taken over by another writer meanwhile"]
        else:
            group = zarr.open_group(loc.child(self._dir), mode="r")
            problems = array_problems(group, self.expected_shapes())
        if problems:
            self._done = True
            if loc.local or (owner is not None and owner.id == self.owner.id):
                loc.remove(self._dir)  # ours alone (a temporary name holds this writer's id)
            raise RuntimeError(f"{loc.child(self.final)}: not published: {'; '.join(problems)}")

    def publish(self) -> None:
        """Rename the temporary group to its final name (local paths)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop everything written so far (nothing becomes visible)."""
        if not self._done:
            self._done = True
            self.store.loc.remove(self._dir)

    def __enter__(self) -> GroupWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if not self._done:
            if exc_type is None:
                log.warning("%s: closed without commit(); discarding it", self.name)
            self.abort()
