"""`cache-teacher` across shards with dask.distributed: one idempotent task per shard (DESIGN §8).

The driver creates the store (manifest) once, then submits one task per shard that is not yet
complete, so a rerun after a kill resumes where it stopped. A task loads the teacher once per
worker process (cached), picks that worker's GPU, caches its shard and commits the group; dask
retries a failed task, and shards that still fail are reported, never silently dropped. A full
disk is not retried (it would fail again): the task returns `DiskFull`, the run stops with one
line naming the store, and the finished shards are kept for the rerun.

By default a `LocalCluster` with one worker per visible GPU (or one CPU worker); `--scheduler
tcp://…` spreads the shards over every worker of a running cluster, on as many GPU nodes as it has.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import dask
import torch
from distributed import Client, LocalCluster, as_completed, get_worker
from tqdm import tqdm

from clipocr.cache_teacher.runner import RunnerConfig, cache_shard
from clipocr.cache_teacher.teacher import Teacher, TeacherConfig, load_teacher, store_spec
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.shards import DISK_FULL, load_index, shard_paths
from clipocr.pipeline.teacher_store import TeacherStoreWriter, shard_group_name
from clipocr.pipeline.threads import cpu_threads

log = logging.getLogger(__name__)
# dask's scheduler/worker INFO chatter would bury the progress bars.
logging.getLogger("distributed").setLevel(logging.WARNING)


@dataclass
class CacheJob:
    """Everything a shard task needs; plain data, so dask can ship it to any worker."""

    shards: str
    out: str
    teacher: TeacherConfig
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    device: str = "auto"  # auto = the worker's GPU if any, else CPU
    threads: int | None = None  # torch threads of a CPU task (None: cores minus decode workers)


def _worker_device(requested: str) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        slot = int(get_worker().name)
    except (ValueError, TypeError):
        slot = 0
    return torch.device(f"cuda:{slot % torch.cuda.device_count()}")


@functools.lru_cache(maxsize=2)
def _cached_teacher(cfg: TeacherConfig, device: str) -> Teacher:
    return load_teacher(cfg, device)


@dataclass(frozen=True)
class DiskFull:
    """A shard task's result when the store's disk is full. Returned, not raised: dask would
    retry the task (it would fail again) and log each try's traceback; the driver stops instead."""

    shard: str  # shard file name
    reason: str  # the OS's words (strerror)


def run_shard(job: CacheJob, shard: str) -> dict | DiskFull:
    """One dask task: cache `shard` (a path) into the store unless it is already complete."""
    device = _worker_device(job.device)
    if device.type == "cpu":  # leave the decode workers their cores (see pipeline.threads)
        torch.set_num_threads(cpu_threads(job.runner.workers, job.threads).intra_op)
    teacher = _cached_teacher(job.teacher, str(device))
    writer = TeacherStoreWriter(job.out, store_spec(teacher, job.runner.codec))
    name = shard_group_name(shard)
    if writer.is_complete(name):
        return {"shard": Path(shard).name, "count": None, "missing": [], "skipped": True}
    try:
        with writer.open_shard(name) as group:  # an unfinished group is removed on the way out
            return cache_shard(teacher, group, Path(shard), job.runner)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        return DiskFull(Path(shard).name, err.strerror or str(err))


def _client(scheduler: str | None, workers: int | None, processes: bool) -> Client:
    if scheduler:
        return Client(scheduler)
    n = workers or max(torch.cuda.device_count(), 1)
    # Worker processes must be allowed children: each task decodes in DataLoader workers.
    dask.config.set({"distributed.worker.daemon": False})
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=":0"
    )
    return Client(cluster)


@dataclass
class CacheResult:
    """What a `run_cache` call did: shards found, already complete, cached now, and failed."""

    shards: int  # shards in the shard folder
    already_done: int  # complete in the store before this run (skipped)
    done: list[dict] = field(default_factory=list)  # `cache_shard`'s summary of each shard cached
    failed: dict[str, str] = field(default_factory=dict)  # shard file name -> error

    @property
    def samples(self) -> int:
        """Samples cached by this run (undecodable ones not included)."""
        return sum(r["count"] or 0 for r in self.done)

    @property
    def missing(self) -> int:
        """Undecodable samples this run recorded as missing."""
        return sum(len(r["missing"]) for r in self.done)


def run_cache(
    job: CacheJob,
    scheduler: str | None = None,
    dask_workers: int | None = None,
    processes: bool = True,
    retries: int = 2,
    progress: bool = True,
) -> CacheResult:
    """Cache every shard of `job.shards` not yet in the store; failed shards are reported in
    the result, never raised, so the other shards' work is kept."""
    index = load_index(job.shards)
    paths = shard_paths(job.shards)
    if index["charset"] != job.teacher.charset:
        raise InputError(
            f"{job.shards}: shards use charset {index['charset']}, teacher asked for "
            f"{job.teacher.charset}"
        )
    # The driver creates (or checks) the manifest before any worker starts.
    driver_teacher = load_teacher(job.teacher, "cpu")
    writer = TeacherStoreWriter(job.out, store_spec(driver_teacher, job.runner.codec))
    del driver_teacher
    counts = {shard_group_name(s["name"]): int(s["count"]) for s in index["shards"]}
    pending = [str(p) for p in paths if not writer.is_complete(shard_group_name(p))]
    summary = CacheResult(shards=len(paths), already_done=len(paths) - len(pending))
    if not pending:
        return summary
    bar = tqdm(
        total=sum(counts[shard_group_name(p)] for p in pending),
        desc="cache-teacher",
        unit="img",
        disable=not progress,
    )
    with _client(scheduler, dask_workers, processes) as client:
        futures = client.map(run_shard, [job] * len(pending), pending, retries=retries, pure=False)
        shard_of = {f.key: p for f, p in zip(futures, pending)}
        full: DiskFull | None = None
        for future in as_completed(futures):
            shard = shard_of[future.key]
            if future.cancelled():  # after a full disk: not started, or its result dropped
                continue
            if future.status == "error":
                err = future.exception()
                summary.failed[Path(shard).name] = f"{type(err).__name__}: {err}"
                log.error("%s: failed after %d retries: %s", shard, retries, err)
            elif isinstance(result := future.result(), DiskFull):
                full = full or result
                client.cancel([f for f in futures if not f.done()])  # they would fail alike
            else:
                summary.done.append(result)
            bar.update(counts[shard_group_name(shard)])
    bar.close()
    if full is not None:
        kept = summary.already_done + len(summary.done)
        raise InputError(
            f"{job.out}: disk full while caching the teacher ({full.reason}, at {full.shard}); "
            f"the {kept} finished shard(s) of {summary.shards} are kept: free space and rerun "
            "the same command to resume"
        )
    return summary
