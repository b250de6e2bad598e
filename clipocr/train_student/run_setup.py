"""What a training run settles before its first step: its place in a DDP job, its device and
CPU threads, the teacher store it may train from, and how a DataLoader worker's error reads."""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import IMG_H, IMG_W
from clipocr.pipeline.teacher_store import TeacherStore
from clipocr.pipeline.threads import cpu_threads
from clipocr.train_student.config import TrainConfig

log = logging.getLogger(__name__)


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def set_cpu_threads(cfg: TrainConfig) -> None:
    """Intra-op threads that leave a core to each DataLoader worker (and share the host between
    the DDP ranks on it), so the math and the decoding do not take turns on the same cores."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(cpu_threads(cfg.workers, cfg.threads, ranks_here).intra_op)


# What augmenting a student against a 1-view store's clean-image targets cost, measured
# (BENCHMARKS "Cached views: accuracy"): the reason `augment=None` turns it off there.
CLEAN_TARGET_COST = (
    "distilled that way, a student read 1.3 % of real IIIT5k crops where the same run without "
    "augmentation read 41.1 % and one from a 2-view store 36.2 % (demo budget, 2 seeds)"
)


def resolve_augment(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with ``augment`` made concrete before anything checks or records it.

    Auto (None): augment a plain run and a run from a K-view store (its views replay the pixels
    the teacher saw); do not augment a run distilled from a 1-view store, whose targets are those
    of the un-augmented image — a mismatch that measured far worse than no augmentation. An
    explicit ``--augment`` there is obeyed, with a warning that says what it cost."""
    if cfg.augment is False:
        return cfg
    if not cfg.distill:
        return cfg if cfg.augment else replace(cfg, augment=True)
    views = TeacherStore(cfg.teacher_store).spec.view_count
    if cfg.augment is None:
        log.info("augmentation %s (auto: a %d-view teacher store)", "on" if views > 1 else
                 "off", views)  # fmt: skip
        return replace(cfg, augment=views > 1)
    if views == 1:
        log.warning(
            "%s: one view per sample, so an augmented student is distilled toward the clean "
            "image's features; %s. Cache --views 2 or more, or train with --no-augment",
            cfg.teacher_store, CLEAN_TARGET_COST,
        )  # fmt: skip
    return cfg


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda":  # one process per GPU under torchrun
        return torch.device(f"cuda:{local_rank}")
    return torch.device(cfg.device)


def open_store(cfg: TrainConfig, charset: Charset) -> TeacherStore:
    """The teacher store, refused unless its manifest fits what this run trains with.

    The ``normalised`` storage form keeps `text_emb` unit-length, exact for LCL (which
    L2-normalises its rows) but not for plain L1, whose GAM term compares raw vectors; the image
    and text terms compare LayerNormed rows, which the normalised form leaves (nearly) unchanged.
    """
    store = TeacherStore(cfg.teacher_store)
    store.check_compatible(
        {"charset": charset.name, "preprocessing": {"image_size": [IMG_H, IMG_W]}}
    )
    store.check_sources(cfg.shards)  # cached from these very shard files (quick digest)
    heads = cfg.heads
    if heads.loss_type == "l1" and heads.use_gam and store.spec.form == "normalised":
        raise InputError(
            f"{store.root}: --loss-type l1 compares GAM with the text embedding as stored, and "
            "this store keeps it unit-length (form normalised); re-cache with "
            "`clipocr cache-teacher --form raw` (or train with --no-gam)"
        )
    return store


def unwrap_worker_error(err: Exception) -> Exception:
    """The InputError a DataLoader worker raised, as its own one-line message.

    torch re-raises a worker's exception in the main process as the same class with the whole
    worker traceback as its message ("Caught InputError in DataLoader worker process 0 …");
    the user should read what was wrong with their input, the traceback's last line.
    """
    text = str(err)
    if not text.startswith(f"Caught {InputError.__name__} in DataLoader worker"):
        return err
    own = text.rpartition(f"{InputError.__module__}.{InputError.__qualname__}: ")[2]
    return InputError(own.strip())


def batch_seed(seed: int, epoch: int, batch: dict) -> int:
    """The device augmentation's seed for `batch`: a function of the run's seed, the epoch and
    the batch's first key (each key is in one batch per epoch and rank), so a resumed run
    augments a replayed batch exactly as the uninterrupted run did."""
    return zlib.crc32(f"{seed}/{epoch}/{batch['keys'][0]}".encode())


def rebuild_schedule(
    scheduler: torch.optim.lr_scheduler.OneCycleLR, saved: dict, run_dir: Path, step: int
) -> None:
    """Load the `saved` schedule into `scheduler`; with a new step budget (a larger --max-steps
    or --epochs), the one-cycle schedule for the new total, continued from the current step.

    So the learning rate jumps once, to where the longer schedule would be at this step, and
    the run ends annealed at its new total: what "train longer" asks for. (Restoring the
    saved schedule would end the cycle at the old total and fail past it.)
    """
    fresh = scheduler.state_dict()
    if saved.get("total_steps") == fresh["total_steps"]:
        scheduler.load_state_dict(saved)
        return
    new_phases = {k: fresh[k] for k in ("total_steps", "_schedule_phases")}
    scheduler.load_state_dict({**saved, **new_phases})
    scheduler.last_epoch -= 1
    scheduler.step()  # the lr of the next step, on the new schedule
    log.warning(
        "%s: step budget %s → %d: the learning-rate schedule is rebuilt for the new total "
        "and continues from step %d",
        run_dir,
        saved.get("total_steps"),
        fresh["total_steps"],
        step,
    )


def worker_safe_batches(loader: DataLoader) -> Iterator:
    """`loader`'s batches; when fetching one fails (a worker killed mid-hand-over, say), its
    workers are let go before the error leaves. Otherwise torch's SIGCHLD handler, which checks
    the workers of every live iterator, raises a second "DataLoader worker … killed" later —
    anywhere, even while the first error is being reported — because the traceback keeps the
    iterator alive."""
    batches = iter(loader)
    try:
        yield from batches
    except BaseException:
        shutdown = getattr(batches, "_shutdown_workers", None)  # absent without workers
        if shutdown is not None:
            shutdown()
        raise
