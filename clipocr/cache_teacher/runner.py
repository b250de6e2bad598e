"""Cache one shard: decode in DataLoader workers, run the teacher, write features behind compute.

A shard is small enough (a few thousand encoded images, ~10–50 MB) to read from its tar in one
pass; decoding then runs in DataLoader workers over a map-style view that keeps the shard's order.
Each batch goes to the GPU with a non-blocking copy from pinned memory, through the teacher under
`inference_mode` and autocast, and its features are handed to a writer thread, so Zarr encoding
and disk writes overlap the next batch's forward pass.

A decoding worker that dies (killed, out of memory) or stalls must fail the task, not hang it:
the DataLoader waits at most `RunnerConfig.loader_timeout` seconds for a batch, and any error
from the loader is re-raised naming the shard (`LoaderFailed`), so dask retries the shard and
reports it if it keeps failing. The group records the source shard's digest
(`teacher_store.shard_digest`) so a store can later be checked against the shards it is used with.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from clipocr.cache_teacher.teacher import Teacher
from clipocr.pipeline.precision import autocast
from clipocr.pipeline.preprocess import load_uint8
from clipocr.pipeline.shards import iter_shard_raw
from clipocr.pipeline.teacher_store import ShardGroupWriter, parse_codec, shard_digest

log = logging.getLogger(__name__)


@dataclass
class RunnerConfig:
    batch_size: int = 256
    workers: int = 4
    precision: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU; or bf16 | fp16 | fp32
    codec: str = "zstd"
    # Seconds to wait for one batch from the decoding workers before failing the shard (a batch
    # of 256 small JPEGs decodes in well under a second per worker).
    loader_timeout: float = 120.0


class LoaderFailed(RuntimeError):
    """The image-decoding workers of one shard died or stalled (the task fails; dask retries)."""


class _ShardImages(Dataset):
    """Map-style view of one shard's raw samples; decoding happens in `__getitem__` (workers)."""

    def __init__(self, path: Path) -> None:
        self.samples = list(iter_shard_raw(path))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str]:
        key, data, label = self.samples[i]
        try:
            return key, load_uint8(data, draft=True), label
        except Exception as err:
            log.warning("sample %s: undecodable image (%s); recorded as missing", key, err)
            return key, None, label


def _collate(items: list[tuple[str, torch.Tensor | None, str]]) -> dict:
    good = [it for it in items if it[1] is not None]
    return {
        "keys": [k for k, _, _ in good],
        "images": torch.stack([im for _, im, _ in good]) if good else None,
        "labels": [lab for _, _, lab in good],
        "missing": [k for k, im, _ in items if im is None],
    }


class _WriterThread(threading.Thread):
    """Consumes (keys, GPU features) and appends them to the shard group, off the compute path."""

    def __init__(self, group: ShardGroupWriter, as_float32: bool) -> None:
        super().__init__(daemon=True)
        self.group, self.as_float32 = group, as_float32
        self.jobs: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is not None:
                continue  # drain
            keys, feats = job
            try:
                arrays = {}
                for name, t in feats.items():
                    if name == "text_lengths":
                        arrays[name] = t.cpu().numpy()
                    else:
                        t = t.float() if self.as_float32 else t.half()
                        arrays[name] = t.cpu().numpy()
                self.group.append(keys, arrays)
            except BaseException as err:  # re-raised in the compute thread
                self.error = err

    def put(self, keys: list[str], feats: dict[str, torch.Tensor]) -> None:
        if self.error is not None:
            raise self.error
        self.jobs.put((keys, feats))

    def finish(self) -> None:
        self.jobs.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def _batches(loader: DataLoader, shard_path: Path) -> Iterator[dict]:
    """The loader's batches; any failure of the loader itself is re-raised naming the shard."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:  # a dead worker, a timeout, a broken worker pipe
            raise LoaderFailed(
                f"{shard_path}: image decoding failed ({type(err).__name__}: {err}); "
                "a DataLoader worker died or stalled"
            ) from err
        yield batch


def cache_shard(
    teacher: Teacher,
    group: ShardGroupWriter,
    shard_path: Path,
    cfg: RunnerConfig,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Run `teacher` over one shard into `group` and commit it; returns counts and timing."""
    device = next(teacher.parameters()).device
    tic = time.perf_counter()
    dataset = _ShardImages(shard_path)
    workers = cfg.workers
    if workers and multiprocessing.current_process().daemon:
        log.warning(
            "daemonic worker process (a dask worker started with a nanny?): decoding in-process; "
            "start dask workers with `--no-nanny` or distributed.worker.daemon=False for speed"
        )
        workers = 0
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        timeout=cfg.loader_timeout if workers else 0,
    )
    # Lossless float16 storage needs only half-precision copies off the device; lossy codecs
    # quantise from float32 so their measured fidelity is against float32.
    writer = _WriterThread(group, as_float32=not parse_codec(cfg.codec).lossless)
    writer.start()
    missing: list[str] = []
    source = shard_digest(shard_path)
    try:
        for batch in _batches(loader, shard_path):
            missing += batch["missing"]
            if batch["images"] is not None:
                images = batch["images"].to(device, non_blocking=True)
                with autocast(cfg.precision, device):
                    feats = teacher.features(images, batch["labels"])
                writer.put(batch["keys"], feats)
            if on_batch is not None:
                on_batch(len(batch["keys"]) + len(batch["missing"]))
    finally:
        writer.finish()
    count = group.commit(missing, source=source)
    return {
        "shard": shard_path.name,
        "count": count,
        "missing": missing,
        "seconds": time.perf_counter() - tic,
    }
