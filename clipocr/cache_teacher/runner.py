"""Cache one shard: decode in a persistent worker pool, run the teacher, write behind compute.

Decoding runs in a `DecodePool` kept for all the shards a runner thread caches (a dask worker
caches many): the tar is streamed, batch by batch, to worker processes that decode into shared
memory, in shard order (see `decode_pool`). Each batch goes to the GPU with a non-blocking copy
from pinned memory, through the teacher under `inference_mode` and autocast, and its features
are handed to a writer thread, so Zarr encoding and disk writes overlap the next batch's forward
pass.

A decoding worker that dies (killed, out of memory) or stalls must fail the task, not hang it:
the runner waits at most `RunnerConfig.loader_timeout` seconds for a batch, and a lost worker
fails the shard with `LoaderFailed` naming it, so dask retries the shard (on a fresh pool) and
reports it if it keeps failing. The group records the source shard's digest
(`teacher_store.shard_digest`) so a store can later be checked against the shards it is used with.

A K-view store (``cache-teacher --views K``, DESIGN §5): after view 0 (the decoded image) the
image tower runs on views 1…K−1 of the batch, made from the very uint8 pixels view 0 got by
`pipeline.views.view_pixels` — the function the trainer replays — with the store's seed; only
the image taps get the view axis (the text taps and embedding depend on the label alone). The
views are augmented in the decode pool's workers, next to the decode (`decode_views`; ≈ 0.5
CPU-ms per image and view at 32×128, several times the decode), and arrive with the batch
(`DecodedBatch.views`): the runner's thread only feeds the teacher. Made in this thread, they
capped one runner at ≈ 740 samples/s at K = 4 (1.35 CPU-ms per sample around a null teacher; now
0.06); in the workers they scale with ``--workers``. The pool is keyed on the store's
`ViewSpec`, so it never hands out the views of another store's spec.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from clipocr.cache_teacher.decode_pool import DecodedBatch, DecodePool, shared_pool
from clipocr.cache_teacher.decode_pool import LoaderFailed as LoaderFailed
from clipocr.cache_teacher.decode_views import ViewSpec
from clipocr.cache_teacher.teacher import ImageTaps, Teacher
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.precision import PRECISIONS, autocast
from clipocr.pipeline.teacher_store import ShardGroupWriter, parse_codec, shard_digest
from clipocr.pipeline.teacher_store.spec import view_tap

log = logging.getLogger(__name__)


@dataclass
class RunnerConfig:
    batch_size: int = 256
    workers: int = 4
    precision: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU; or bf16 | fp16 | fp32
    codec: str = "zstd"
    # Seconds to wait for one batch from a decoding worker before failing the shard (a batch
    # of 256 small JPEGs decodes in well under a second per worker).
    loader_timeout: float = 120.0

    def __post_init__(self) -> None:
        """Refuse bad values here, in the driver: inside the shard tasks they would fail every
        shard, each with dask's traceback and retries."""
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.workers < 0:
            raise InputError(f"--workers {self.workers}: must be 0 or more")
        if self.precision not in PRECISIONS:
            choices = ", ".join(PRECISIONS)
            raise InputError(f"--precision {self.precision}: expected one of {choices}")
        if not self.loader_timeout > 0:
            raise InputError(f"loader_timeout {self.loader_timeout}: must be positive")


class _WriterThread(threading.Thread):
    """Consumes (keys, GPU features, labels) and appends them to the shard group, off the compute
    path. The labels go with each batch (a table-layout group looks up its references from
    them), so no task reads the shard's labels in a pass of its own (issue 22)."""

    def __init__(self, group: ShardGroupWriter, as_float32: bool) -> None:
        super().__init__(daemon=True)
        self.group, self.as_float32 = group, as_float32
        self.jobs: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is not None:
                continue  # drain
            keys, feats, labels = job
            try:
                arrays = {}
                for name, t in feats.items():
                    if name == "text_lengths":
                        arrays[name] = t.cpu().numpy()
                    else:
                        t = t.float() if self.as_float32 else t.half()
                        arrays[name] = t.cpu().numpy()
                if self.group.refs:
                    self.group.give_labels(keys, labels)
                self.group.append(keys, arrays)
            except BaseException as err:  # re-raised in the compute thread
                self.error = err

    def put(self, keys: list[str], feats: dict[str, torch.Tensor], labels: list[str]) -> None:
        if self.error is not None:
            raise self.error
        self.jobs.put((keys, feats, labels))

    def finish(self) -> None:
        self.jobs.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def _decode_workers(requested: int) -> int:
    if requested and multiprocessing.current_process().daemon:
        log.warning(
            "daemonic worker process (a dask worker started with a nanny?): decoding in-process; "
            "start dask workers with `--no-nanny` or distributed.worker.daemon=False for speed"
        )
        return 0
    return requested


def _view_features(
    teacher: Teacher | ImageTaps,
    batch: DecodedBatch,
    device: torch.device,
    precision: str,
) -> dict[str, torch.Tensor]:
    """The image taps of views 1…K−1 of `batch` (made by the decode pool), as ``<tap>_v<v>``."""
    image_only = teacher.teacher if isinstance(teacher, ImageTaps) else teacher
    out = {}
    for v, pixels in enumerate(batch.views, start=1):
        images = pixels.to(device, non_blocking=True)
        with autocast(precision, device):
            feats = image_only.features(images, batch.labels, text=False)
        out |= {view_tap(tap, v): x for tap, x in feats.items()}
    return out


def cache_shard(
    teacher: Teacher,
    group: ShardGroupWriter,
    shard_path: Path,
    cfg: RunnerConfig,
    on_batch: Callable[[int], None] | None = None,
    pool: DecodePool | None = None,
) -> dict:
    """Run `teacher` over one shard into `group` and commit it; returns counts and timing.

    `pool`: the decode workers to use; by default this thread's `shared_pool`, kept for the
    next shard. A given pool must make the store's views (`DecodePool.views`)."""
    device = next(teacher.parameters()).device
    tic = time.perf_counter()
    views = ViewSpec.from_record(group.store.spec.views)  # None unless K ≥ 2 views per sample
    if pool is None:
        pool = shared_pool(_decode_workers(cfg.workers), cfg.batch_size, cfg.loader_timeout,
                           pin_memory=device.type == "cuda", views=views)  # fmt: skip
    elif pool.views != views:
        raise ValueError(f"{shard_path}: the decode pool makes views {pool.views}, the store "
                         f"wants {views}")  # fmt: skip
    # Lossless float16 storage needs only half-precision copies off the device; lossy codecs
    # quantise from float32 so their measured fidelity is against float32.
    writer = _WriterThread(group, as_float32=not parse_codec(cfg.codec).lossless)
    writer.start()
    missing: list[str] = []
    batches = pool.batches(shard_path)
    try:
        for batch in batches:
            missing += batch.missing
            if batch.images is not None:
                images = batch.images.to(device, non_blocking=True)
                with autocast(cfg.precision, device):
                    feats = teacher.features(images, batch.labels)
                if batch.views is not None:
                    feats |= _view_features(teacher, batch, device, cfg.precision)
                writer.put(batch.keys, feats, batch.labels)
            if on_batch is not None:
                on_batch(len(batch.keys) + len(batch.missing))
    finally:
        batches.close()  # now, not when a traceback lets go of it: the pool serves the next shard
        writer.finish()
    # Digested after the read, not before it: the first batch does not wait for a pass over the
    # whole file, and this one reads it from the page cache.
    count = group.commit(missing, source=shard_digest(shard_path))
    return {
        "shard": shard_path.name,
        "count": count,
        "missing": missing,
        "seconds": time.perf_counter() - tic,
    }
