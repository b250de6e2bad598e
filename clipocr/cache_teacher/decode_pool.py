"""Image decoding for the cache runner: one pool of worker processes that serves all its shards.

Why not a DataLoader per shard, as before: each shard paid for starting and stopping its
workers, read its whole tar into memory before the first batch, and every decoded batch was
pickled back through a pipe. Here the workers start once per runner thread (a dask worker
caches many shards) and stay. The runner's process streams the tar (`iter_shard_raw`) and sends
batch *i*'s encoded bytes to worker *i* mod *n* (so batches come back in shard order, which the
store's key join needs); the worker decodes them (`decode_uint8`, the student's training-speed
``draft`` path, bit for bit) straight into one slot of a shared uint8 buffer, and only the
indices of undecodable samples travel back. The runner copies the slot into a (pinned) tensor
and reuses it, so at most ``prefetch`` batches per worker are decoded ahead.

For a K-view store the pool is built with the store's `ViewSpec` (`shared_pool(..., views=)`):
the worker then also makes views 1…K−1 of each decoded image (`decode_views.decode_job`, the
trainer's `view_pixels`) into the same slot, K times the size, so the runner thread only runs the
teacher; `DecodedBatch.views` carries them. The in-process mode calls the same `decode_job`.

The safeguards stay: a worker that dies (kill -9, the OOM killer) or sends nothing for
`timeout` seconds fails the shard with `LoaderFailed` naming it (dask retries the shard), never
a hang; the pool is then torn down, and the next shard gets a fresh one. Workers leave by
themselves when their runner process is gone (they watch their parent), and are daemonic, so
a normal exit takes them along.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch

from clipocr.cache_teacher.decode_views import Decoder, ViewSpec, decode_job, slot_views
from clipocr.cache_teacher.decode_views import decode_training as decode_training
from clipocr.pipeline.preprocess import IMG_H, IMG_W
from clipocr.pipeline.shards import iter_shard_raw

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often a runner waiting for a batch checks that its worker is alive
_QUIT = object()  # ends a feeder thread (None, sent on to the worker, ends the worker)


class LoaderFailed(RuntimeError):
    """The image-decoding workers of one shard died or stalled (the task fails; dask retries)."""


@dataclass
class DecodedBatch:
    """One batch of a shard, in shard order: the decoded samples and the undecodable ones."""

    keys: list[str]
    images: torch.Tensor | None  # uint8 (len(keys), 3, 32, 128); None when nothing decoded
    labels: list[str]
    missing: list[str]  # keys whose image did not decode (the store records them missing)
    # views 1…K−1 of `images` for a pool with a `ViewSpec`: uint8 (K−1, len(keys), 3, 32, 128),
    # views[v − 1] being view v; None without a spec or when nothing decoded
    views: torch.Tensor | None = None


@dataclass
class _Job:
    seq: int
    slot: int
    worker: int
    keys: list[str]
    labels: list[str]


def _chunks(samples: Iterable[tuple[str, bytes, str]], size: int) -> Iterator[list]:
    chunk: list = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _worker(tasks: Connection, results: Connection, buffer, shape: tuple, decode: Decoder,
            views: ViewSpec | None, parent: int) -> None:  # fmt: skip
    """A decode process: (seq, slot, encoded images, keys) in, (seq, failures, error) out, until
    told to stop or its runner is gone. `error`: a view that could not be made (a bug, not bad
    data), sent back so the runner fails the shard with it rather than with a dead worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle
    slots = np.frombuffer(buffer, dtype=np.uint8).reshape(shape)
    while True:
        if not tasks.poll(1.0):
            if os.getppid() != parent:
                return  # the runner was killed: nobody will read the results
            continue
        try:
            task = tasks.recv()
        except EOFError:
            return
        if task is None:
            return
        seq, slot, datas, keys = task
        bad, error = [], None
        try:
            bad = decode_job(decode, views, datas, keys, slots[slot])
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
        try:
            results.send((seq, bad, error))
        except OSError:
            return  # the runner closed the pool (or is gone)


def _feed(jobs: queue.SimpleQueue, conn: Connection) -> None:
    """Send one worker its tasks from a thread, so a slow or stalled worker never blocks the
    runner; a worker that is gone ends the thread quietly (the runner reports it). The thread
    alone closes its pipe: closed under a blocked write, the descriptor could be reused."""
    try:
        while (task := jobs.get()) is not _QUIT:
            conn.send(task)
    except OSError:
        pass
    finally:
        conn.close()


def _stop(procs: list, feeds: list[queue.SimpleQueue], conns: list[Connection],
          polite: bool) -> None:  # fmt: skip
    """Stop the workers: ask, wait a moment, then kill what is left; close the result pipes
    (each feeder thread closes its own task pipe on `_QUIT`, or when its worker is gone)."""
    for jobs in feeds:
        if polite:
            jobs.put(None)  # the worker's stop signal, sent after its queued tasks
        jobs.put(_QUIT)
    deadline = time.monotonic() + (1.0 if polite else 0.0)
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    for conn in conns:
        conn.close()


def _start_method() -> str:
    # fork starts a worker in milliseconds and is what the DataLoader used here before; the
    # workers touch neither CUDA nor torch threads. Where fork is missing, spawn.
    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"


class DecodePool:
    """`workers` decode processes (0: decode in the calling thread) for batches of
    `batch_size`, kept for every shard passed to `batches`; one shard at a time. With `views`,
    every batch also brings views 1…K−1 of its images (`DecodedBatch.views`)."""

    def __init__(
        self,
        workers: int,
        batch_size: int,
        timeout: float = 120.0,
        *,
        pin_memory: bool = False,
        decode: Decoder = decode_training,
        prefetch: int = 2,
        views: ViewSpec | None = None,
    ) -> None:
        if workers < 0 or batch_size < 1 or prefetch < 1:
            raise ValueError(f"DecodePool({workers=}, {batch_size=}, {prefetch=})")
        self.workers, self.batch_size, self.timeout = workers, batch_size, timeout
        self.pin_memory, self.decode, self.views = pin_memory, decode, views
        self.broken: str | None = None  # why the pool cannot be used any more
        self._seq = 0
        self._busy = False
        self._procs: list = []
        self._feeds: list[queue.SimpleQueue] = []
        self._results: list[Connection] = []
        slots = workers * prefetch if workers else 1
        shape = (slots, slot_views(views), batch_size, 3, IMG_H, IMG_W)
        self._free = deque(range(shape[0]))
        if not workers:
            self._slots = np.empty(shape, np.uint8)
        else:
            ctx = mp.get_context(_start_method())
            buffer = ctx.RawArray("B", int(np.prod(shape)))  # shared by runner and workers
            self._slots = np.frombuffer(buffer, np.uint8).reshape(shape)
            try:
                for w in range(workers):
                    self._start_worker(ctx, w, buffer, shape)
            except BaseException:
                _stop(self._procs, self._feeds, self._results, polite=False)
                raise
        # Workers stop when the pool is dropped or at exit, whichever comes first.
        self._finalizer = weakref.finalize(
            self, _stop, self._procs, self._feeds, self._results, True
        )

    def _start_worker(self, ctx, w: int, buffer, shape: tuple) -> None:
        task_recv, task_send = ctx.Pipe(duplex=False)
        result_recv, result_send = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker,
            args=(task_recv, result_send, buffer, shape, self.decode, self.views, os.getpid()),
            name=f"clipocr-decode-{w}",
            daemon=True,
        )
        proc.start()
        task_recv.close()  # the worker's ends: the runner keeps only its own
        result_send.close()
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_feed, args=(jobs, task_send), daemon=True).start()
        self._procs.append(proc)
        self._feeds.append(jobs)
        self._results.append(result_recv)

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (empty when decoding in-process)."""
        return [p.pid for p in self._procs]

    def usable(self) -> bool:
        """Not broken, and every worker alive (one killed between shards makes it unusable)."""
        return self.broken is None and all(p.is_alive() for p in self._procs)

    def close(self, polite: bool = True) -> None:
        """Stop the workers (asked, then killed after a second); safe to call twice."""
        self._finalizer.detach()
        _stop(self._procs, self._feeds, self._results, polite)
        if self.broken is None:
            self.broken = "closed"

    def batches(self, shard: Path) -> Iterator[DecodedBatch]:
        """The batches of `shard` in order. Raises `LoaderFailed` (naming the shard) when a worker
        dies or stalls; a consumer that stops early leaves the pool ready for the next shard."""
        if self.broken is not None:
            raise LoaderFailed(f"{shard}: decode pool unusable ({self.broken})")
        if self._busy:
            raise RuntimeError("a DecodePool reads one shard at a time")
        self._busy = True
        try:
            yield from self._pooled(shard) if self.workers else self._in_process(shard)
        finally:
            self._busy = False

    # -- in-process ------------------------------------------------------------------------------
    def _in_process(self, shard: Path) -> Iterator[DecodedBatch]:
        for chunk in _chunks(iter_shard_raw(shard), self.batch_size):
            keys, labels = [k for k, _, _ in chunk], [lab for _, _, lab in chunk]
            datas = [data for _, data, _ in chunk]
            bad = decode_job(self.decode, self.views, datas, keys, self._slots[0])
            yield self._batch(_Job(0, 0, 0, keys, labels), bad)

    # -- pooled ----------------------------------------------------------------------------------
    def _pooled(self, shard: Path) -> Iterator[DecodedBatch]:
        pending: deque[_Job] = deque()
        try:
            for chunk in _chunks(iter_shard_raw(shard), self.batch_size):
                if not self._free:
                    yield self._collect(pending.popleft(), shard)
                pending.append(self._submit(chunk))
            while pending:
                yield self._collect(pending.popleft(), shard)
        finally:
            self._drain(pending, shard)

    def _submit(self, chunk: list[tuple[str, bytes, str]]) -> _Job:
        job = _Job(
            self._seq, self._free.popleft(), self._seq % self.workers,
            [k for k, _, _ in chunk], [lab for _, _, lab in chunk],
        )  # fmt: skip
        self._seq += 1
        self._feeds[job.worker].put((job.seq, job.slot, [data for _, data, _ in chunk], job.keys))
        return job

    def _receive(self, job: _Job, shard: Path) -> tuple[list[tuple[int, str]], str | None]:
        """Wait for `job`'s result, (failures, error): at most `timeout` seconds, checking that
        its worker lives."""
        conn, proc = self._results[job.worker], self._procs[job.worker]
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if conn.poll(POLL_S):
                    seq, bad, error = conn.recv()
                    break
            except (EOFError, OSError):  # the worker's end closed: it is dying
                proc.join(POLL_S)
            if not proc.is_alive():
                raise self._fail(shard, f"decode worker {proc.pid} died, exit code {proc.exitcode}")
            if time.monotonic() > deadline:
                raise self._fail(
                    shard, f"decode worker {proc.pid} sent no batch for {self.timeout:g} s"
                )
        if seq != job.seq:
            raise self._fail(shard, f"batch {seq} arrived where {job.seq} was due")
        return bad, error

    def _collect(self, job: _Job, shard: Path) -> DecodedBatch:
        bad, error = self._receive(job, shard)
        batch = self._batch(job, bad) if error is None else None
        self._free.append(job.slot)
        if batch is None:  # the pool stays usable: the worker lives and the slot is free
            raise RuntimeError(f"{shard}: a decode worker failed on batch {job.seq}: {error}")
        return batch

    def _batch(self, job: _Job, bad: list[tuple[int, str]]) -> DecodedBatch:
        """Copy the slot's decoded samples out (into pinned memory for a GPU) and say which of
        them failed."""
        failed = dict(bad)
        for i, why in bad:
            log.warning("sample %s: undecodable image (%s); recorded as missing", job.keys[i], why)
        good = [i for i in range(len(job.keys)) if i not in failed]
        images = views = None
        if good:
            # (K, n, 3, 32, 128): view 0 = the decoded images, then views 1…K−1 (K = 1 without)
            src = torch.from_numpy(self._slots[job.slot, :, : len(job.keys)])
            out = torch.empty((src.shape[0], len(good), 3, IMG_H, IMG_W), dtype=torch.uint8,
                              pin_memory=self.pin_memory)  # fmt: skip
            if failed:
                torch.index_select(src, 1, torch.tensor(good), out=out)
            else:
                out.copy_(src)
            images = out[0]
            views = out[1:] if self.views is not None else None
        return DecodedBatch(
            keys=[job.keys[i] for i in good],
            images=images,
            labels=[job.labels[i] for i in good],
            missing=[job.keys[i] for i in sorted(failed)],
            views=views,
        )

    def _drain(self, pending: deque[_Job], shard: Path) -> None:
        """Take the results of batches still out (a consumer stopped early), so the next shard
        does not receive them; a pool that cannot deliver them is torn down instead."""
        while pending and self.broken is None:
            job = pending.popleft()
            try:
                self._receive(job, shard)
            except LoaderFailed:
                return
            self._free.append(job.slot)

    def _fail(self, shard: Path, reason: str) -> LoaderFailed:
        self.broken = reason
        self.close(polite=False)
        return LoaderFailed(
            f"{shard}: image decoding failed ({reason}); a decode worker died or stalled"
        )


_local = threading.local()


def shared_pool(
    workers: int,
    batch_size: int,
    timeout: float,
    pin_memory: bool,
    views: ViewSpec | None = None,
) -> DecodePool:
    """This thread's pool, kept from shard to shard (a dask worker thread caches many); replaced
    when the settings change (the view spec included: a pool never hands out another store's
    views), after a failure, or when a worker was lost between shards."""
    settings = (workers, batch_size, timeout, pin_memory, views)
    pool: DecodePool | None = getattr(_local, "pool", None)
    if pool is not None and (_local.settings != settings or not pool.usable()):
        if pool.broken is None:
            log.warning("decode pool replaced (a worker was lost, or the settings changed)")
        pool.close(polite=pool.usable())
        pool = None
    if pool is None:
        pool = DecodePool(workers, batch_size, timeout, pin_memory=pin_memory, views=views)
        _local.pool, _local.settings = pool, settings
    return pool
