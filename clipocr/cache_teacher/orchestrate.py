"""`cache-teacher` across shards with dask.distributed: one idempotent task per shard (DESIGN §8).

The driver creates the store (manifest) once, then submits one task per shard that is not yet
complete, so a rerun after a kill resumes where it stopped. A task loads the teacher once per
worker process (cached), picks that worker's GPU, caches its shard and commits the group; dask
retries a failed task, and shards that still fail are reported, never silently dropped. A full
disk is not retried (it would fail again): the task returns `DiskFull`, the run stops with one
line naming the store, and the finished shards are kept for the rerun.

In the ``table`` text layout (the default) the text tower runs once per distinct label: before
the shard tasks, the driver collects the shards' labels and one task writes the labels the
store's text table lacks as a new table part (`label_table`); shard tasks then cache the image
taps only (`ImageTaps`) and give each sample a reference into the table. Each shard's writer is
told the shard's sample count from ``shards.json``, so it allocates its arrays once.

By default a `LocalCluster` with one worker per visible GPU (or one CPU worker); `--scheduler
tcp://…` spreads the shards over every worker of a running cluster, on as many GPU nodes as it has.
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from distributed import Client, as_completed, get_worker
from tqdm import tqdm

from clipocr.cache_teacher.cluster import cluster_client
from clipocr.cache_teacher.label_table import ShardLabels, labels_of_shards, write_text_table
from clipocr.cache_teacher.runner import RunnerConfig, cache_shard
from clipocr.cache_teacher.teacher import (
    ImageTaps,
    Teacher,
    TeacherConfig,
    load_teacher,
    store_spec,
)
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.shards import DISK_FULL, load_index, shard_paths
from clipocr.pipeline.teacher_store import (
    MANIFEST_NAME,
    StoreSpec,
    TeacherStoreWriter,
    shard_group_name,
)
from clipocr.pipeline.teacher_store.location import Location
from clipocr.pipeline.threads import cpu_threads
from clipocr.pipeline.view_record import views_record

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
    text_layout: str = "table"  # text once per distinct label ("table") or per sample ("ragged")
    text_pad: str = "masked"  # "align": keep CLIP's pad-token features (the official code's way)
    # cached views per sample (DESIGN §5): 1 = the clean image only (a format-2 store, as
    # before); K ≥ 2 adds K − 1 augmentations of it, seeded from `view_seed` and each key
    views: int = 1
    view_seed: int = 0

    def __post_init__(self) -> None:
        if self.views < 1:
            raise InputError(f"cache-teacher: --views {self.views}: must be at least 1")

    def spec(self, teacher: Teacher) -> StoreSpec:
        """The store spec this job writes with `teacher` (and its views record, if K ≥ 2)."""
        spec = store_spec(teacher, self.runner.codec, self.text_layout, self.text_pad)
        if self.views > 1:
            spec.views = copy.deepcopy(_views_record(self.views, self.view_seed))
        return spec


@functools.lru_cache(maxsize=4)
def _views_record(views: int, seed: int) -> dict:
    """The manifest's views record as this process makes the pixels (once per process: every
    shard task checks its own record against the store's, so a worker whose libraries would
    make other pixels is refused rather than mixing them into the store)."""
    return views_record(views, seed).to_dict()


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


@dataclass(frozen=True)
class BadShard:
    """A shard task's result when the shard itself is bad (truncated, corrupt): returned, not
    raised, as `DiskFull` is (a retry would read the same bytes); the other shards go on."""

    shard: str  # shard file name
    reason: str  # the InputError's one line


def _task_teacher(job: CacheJob) -> Teacher:
    device = _worker_device(job.device)
    if device.type == "cpu":  # leave the decode workers their cores (see pipeline.threads)
        torch.set_num_threads(cpu_threads(job.runner.workers, job.threads).intra_op)
    return _cached_teacher(job.teacher, str(device))


def run_text_table(job: CacheJob, labels: list[str]) -> int:
    """One dask task: the text tower on `labels` into a new part of the store's text table."""
    teacher = _task_teacher(job)
    writer = TeacherStoreWriter(job.out, job.spec(teacher))
    return write_text_table(teacher, writer, labels, job.runner.precision)


def run_shard(job: CacheJob, shard: str, expected: int | None = None) -> dict | DiskFull | BadShard:
    """One dask task: cache `shard` (a path) into the store unless it is already complete;
    `expected` = its sample count in ``shards.json``."""
    teacher = _task_teacher(job)
    writer = TeacherStoreWriter(job.out, job.spec(teacher))
    name = shard_group_name(shard)
    if writer.is_complete(name):
        return {"shard": Path(shard).name, "count": None, "missing": [], "skipped": True}
    try:
        # table layout: each decoded batch brings its labels (no pass over the shard's labels)
        runs = ImageTaps(teacher) if job.text_layout == "table" else teacher
        # an unfinished group is removed on the way out
        with writer.open_shard(name, expected=expected) as group:
            return cache_shard(runs, group, Path(shard), job.runner)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        return DiskFull(Path(shard).name, err.strerror or str(err))
    except InputError as err:
        if writer.is_complete(name):  # another run published it meanwhile
            return {"shard": Path(shard).name, "count": None, "missing": [], "skipped": True}
        return BadShard(Path(shard).name, str(err))


def _cancel_unstarted(client: Client, futures: list) -> None:
    """Cancel the tasks no worker has taken yet; those running finish (commit or clean up their
    group), so no writer is cut off mid-shard when the driver stops."""
    running = {key for keys in client.processing().values() for key in keys}
    client.cancel([f for f in futures if not f.done() and f.key not in running])


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


def _label_tasks(client: Client, pending: list[str]) -> list[list[str]]:
    """The pending shards in groups, about four per dask thread: a task per shard would cost
    the scheduler more than reading a shard's labels does."""
    threads = max(sum(client.nthreads().values()), 1)
    n = min(len(pending), 4 * threads)
    return [pending[i::n] for i in range(n)]


def _fill_text_table(
    client: Client,
    job: CacheJob,
    writer: TeacherStoreWriter,
    pending: list[str],
    summary: CacheResult,
) -> bool:
    """Give the store's text table every label of the `pending` shards before they are cached
    (one new part for the labels it lacks); False, with the failure in `summary`, if that failed.
    """
    labels: set[str] = set()
    for future in as_completed(client.map(labels_of_shards, _label_tasks(client, pending),
                                          pure=False)):  # fmt: skip
        found: ShardLabels = future.result()
        summary.failed |= found.bad  # their shard tasks fail alike (reported once)
        labels.update(found.labels())
    new = writer.text_index(refresh=True).missing(sorted(labels))
    if not new:
        return True
    future = client.submit(run_text_table, job, new, pure=False)
    try:
        part = future.result()
    except Exception as err:
        summary.failed["text table"] = f"{type(err).__name__}: {err}"
        log.error("text table: failed: %s", err)
        return False
    log.info("text table: %d new labels in part %d", len(new), part)
    return True


def _store_exists(out: str) -> bool:
    return Location(out).exists(MANIFEST_NAME)


def _interrupted(out: str, spec: StoreSpec, paths: list[Path]) -> str:
    """The one line of a run stopped by Ctrl-C or SIGTERM: what the store keeps, what next."""
    done = 0
    if _store_exists(out):
        writer = TeacherStoreWriter(out, spec)
        done = sum(writer.is_complete(shard_group_name(p)) for p in paths)
    return (
        f"{out}: interrupted; {done} of {len(paths)} shard(s) are cached and kept: rerun the "
        "same command to resume"
    )


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
    # The driver checks an existing store's manifest before any worker starts, and creates a
    # new store only once the cluster is up: a scheduler it cannot reach leaves no store behind.
    driver_teacher = load_teacher(job.teacher, "cpu")
    spec = job.spec(driver_teacher)
    del driver_teacher
    writer = TeacherStoreWriter(job.out, spec) if _store_exists(job.out) else None
    counts = {shard_group_name(s["name"]): int(s["count"]) for s in index["shards"]}
    pending = [str(p) for p in paths if not (writer and writer.is_complete(shard_group_name(p)))]
    summary = CacheResult(shards=len(paths), already_done=len(paths) - len(pending))
    if not pending:
        return summary
    with (
        cluster_client(
            scheduler, dask_workers, processes, lambda: _interrupted(job.out, spec, paths)
        ) as client,
        tqdm(  # once connected: an unreachable scheduler's error gets a line of its own
            total=sum(counts[shard_group_name(p)] for p in pending),
            desc="cache-teacher",
            unit="img",
            disable=not progress,
        ) as bar,
    ):
        writer = writer or TeacherStoreWriter(job.out, spec)
        table = job.text_layout == "table"
        if table and not _fill_text_table(client, job, writer, pending, summary):
            bar.close()
            return summary
        expected = [counts[shard_group_name(p)] for p in pending]
        futures = client.map(
            run_shard, [job] * len(pending), pending, expected, retries=retries, pure=False
        )
        shard_of = {f.key: p for f, p in zip(futures, pending)}
        full: DiskFull | None = None
        for future in as_completed(futures):
            shard = shard_of[future.key]
            if future.cancelled():  # not started when the disk filled
                continue
            if future.status == "error":
                err = future.exception()
                summary.failed[Path(shard).name] = f"{type(err).__name__}: {err}"
                log.error("%s: failed after %d retries: %s", shard, retries, err)
            elif isinstance(result := future.result(), DiskFull):
                full = full or result
                _cancel_unstarted(client, futures)  # they would fail alike
            elif isinstance(result, BadShard):
                summary.failed[result.shard] = result.reason
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
