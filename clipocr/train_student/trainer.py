"""The training loop: streaming batches → DistillSystem → AdamW + OneCycle, with checkpoints.

Resume is exact: a checkpoint holds the student, heads, optimizer, scheduler, the step/epoch/batch
position and the torch RNG state, and the data stream is a pure function of (seed, epoch, position)
(see `dataset.py`), so `--resume` continues with the very batch and dropout masks the uninterrupted
run would have used (with `--precision fp16`, the GradScaler's state is in the checkpoint too). CLIP
is never loaded here: the teacher only exists as cached targets, and validation is a callable the
caller hands in (the command builds it from `clipocr.evaluate`, a package above this one).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError, RunInterrupted
from clipocr.pipeline.precision import autocast
from clipocr.pipeline.preprocess import normalize
from clipocr.pipeline.shards import DISK_FULL, shard_paths
from clipocr.train_student.config import TrainConfig
from clipocr.train_student.dataset import DistillStream, StreamConfig
from clipocr.train_student.device_augment import DeviceAugment
from clipocr.train_student.init_from import INIT_RECORD, InitReport, init_student
from clipocr.train_student.model import Student, student_config
from clipocr.train_student.run_dir import (
    CONFIG_NAME,
    STUDENT_NAME,
    check_run_dir,
    resume_checkpoint,
    write_checkpoint,
)
from clipocr.train_student.run_lock import RunLock
from clipocr.train_student.run_log import RunLog
from clipocr.train_student.run_setup import (
    batch_seed,
    dist_env,
    open_store,
    pick_device,
    rebuild_schedule,
    resolve_augment,
    set_cpu_threads,
    unwrap_worker_error,
    worker_safe_batches,
)
from clipocr.train_student.system import DistillSystem, param_groups

log = logging.getLogger(__name__)


# Validation: the student and its device → history fields, e.g. ``{"val_acc/IIIT5k": 0.91}``.
Validate = Callable[[Student, torch.device], dict[str, float]]


@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class Trainer:
    """One training run; `run()` trains to the step budget and exports the student."""

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        validate: Validate | None = None,
        wait: bool = False,
    ) -> None:
        """`validate` runs every ``cfg.val_every`` steps and at the end when ``cfg.val`` names
        validation sets (see `Validate`); without it, ``cfg.val`` is ignored with a warning.
        The run folder is locked from here until `run` ends (`run_lock`): another run holding
        it is an error, or is waited for with `wait`."""
        cfg = resolve_augment(cfg)  # before the resume check compares and the run records it
        self.cfg = cfg
        self.rank, self.world, local_rank = dist_env()
        self.is_main = self.rank == 0
        self.run_dir = Path(cfg.out)
        self.lock = RunLock(self.run_dir, wait) if self.is_main else None
        try:
            self._setup(cfg, resume, validate, local_rank)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give the run folder up (`run` does this when it ends)."""
        if self.lock is not None:
            self.lock.release()

    def _setup(
        self, cfg: TrainConfig, resume: bool, validate: Validate | None, local_rank: int
    ) -> None:
        if cfg.val and validate is None and self.is_main:
            log.warning("train: validation sets given but no validation to run them; skipped")
        self.validate = validate if cfg.val else None
        check_run_dir(cfg, self.run_dir, resume)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.device = pick_device(cfg, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        elif self.device.type == "cpu":  # on a GPU, torch's default threads only feed the device
            set_cpu_threads(cfg)

        torch.manual_seed(cfg.seed)
        self.charset = Charset.from_name(cfg.charset)
        shard_paths(cfg.shards)  # every shard shards.json lists is there: an error now, not later
        self.store = open_store(cfg, self.charset) if cfg.distill else None
        self.student = Student(student_config(cfg.preset, charset=cfg.charset, **cfg.student))
        self.init_report: InitReport | None = None
        if cfg.init_from and not resume:  # a resumed run's weights come from its checkpoint
            self.init_report = init_student(self.student, cfg.init_from)
        dims = self.store.spec.dims if self.store is not None else None
        self.system = DistillSystem(self.student, dims, cfg.heads).to(self.device)
        self.model = (
            DistributedDataParallel(self.system, find_unused_parameters=False)
            if self.world > 1
            else self.system
        )

        views = self.store.spec.view_count if self.store is not None else 1
        if cfg.augment and cfg.augment_on == "device" and views > 1:
            raise InputError(
                f"{self.store.root}: caches {views} views per sample, and --augment-on device "
                "cannot replay them (it draws other ops than the host): train with --augment-on "
                "host to use the views, or from a 1-view store"
            )
        self.stream = DistillStream(
            cfg.shards,
            self.charset,
            StreamConfig(
                cfg.batch_size,
                cfg.shuffle_buffer,
                cfg.augment and cfg.augment_on == "host",
                cfg.seed,
                cfg.augment_from_epoch,
                open_shards=cfg.open_shards,
                allow_view_drift=cfg.allow_view_drift,
            ),
            store=self.store,
            rank=self.rank,
            world=self.world,
        )
        self.stream.num_workers = max(cfg.workers, 1)
        # The same op distribution, drawn per image, on the batch once it is on the device.
        on_device = cfg.augment and cfg.augment_on == "device"
        self.device_augment = DeviceAugment() if on_device else None
        self.steps_per_epoch = self.stream.batches_per_epoch()
        if self.steps_per_epoch == 0:
            raise InputError(f"{cfg.shards}: no batches for rank {self.rank}")
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch

        lr = cfg.lr * math.sqrt(self.world) * cfg.batch_size / 256
        groups = param_groups(self.system, lr, cfg.dec_lr_scale)
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=[g["lr"] for g in groups],
            total_steps=self.total_steps,
            pct_start=cfg.warmup_pct,
            cycle_momentum=False,
        )
        # fp16 gradients underflow without loss scaling; bf16 and fp32 have fp32's range. A
        # disabled scaler is a no-op pass-through, so one code path serves every precision.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.pos = Position()
        self.resumed = resume
        if resume:
            self._load_latest()
        if self.is_main:
            log.info("student: %.2f M parameters", self.student.num_params() / 1e6)

    # -- run directory and checkpoints ---------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Student (safetensors) + training state into checkpoints/step-N (see `run_dir`)."""
        state = {
            "position": vars(self.pos),
            "system": self.system.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        return write_checkpoint(
            self.run_dir, self.pos.step, self.student, state, self.cfg.keep_checkpoints
        )

    def _load_latest(self) -> None:
        found = resume_checkpoint(self.run_dir, self.device, self._restore)
        log.warning("%s: resumed at step %d", found, self.pos.step)

    def _restore(self, state: dict) -> None:
        self.system.load_state_dict(state["system"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.pos = Position(**state["position"])
        if self.pos.step > self.total_steps:
            raise InputError(
                f"{self.run_dir}: the run is at step {self.pos.step}, past the step budget "
                f"{self.total_steps}; resume with a larger --max-steps (or --epochs)"
            )
        rebuild_schedule(self.scheduler, state["scheduler"], self.run_dir, self.pos.step)
        if "scaler" in state:  # checkpoints written before fp16 had a scaler hold none
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])

    # -- one step ------------------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        moved = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, non_blocking=True)
            moved[key] = value
        images = moved["images"]
        if self.device_augment is not None and self.pos.epoch >= self.cfg.augment_from_epoch:
            images = self.device_augment(images, batch_seed(self.cfg.seed, self.pos.epoch, batch))
        moved["images"] = normalize(images)
        return moved

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimisation step; returns detached loss terms (read them only when logging: each
        read of a CUDA tensor waits for the device)."""
        self.model.train()
        with autocast(self.cfg.precision, self.device):
            terms = self.model(self._to_device(batch))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(self.system.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        with warnings.catch_warnings():
            # An fp16 step skipped for overflow still advances the schedule (it follows the step
            # count, which resume relies on); torch warns about that on the first step.
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        out = {k: v.detach() for k, v in terms.items()}
        out["grad_norm"] = grad_norm.detach()
        return out

    def _loader(self) -> DataLoader:
        return DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            # A private generator keeps the DataLoader from drawing on the global RNG, so dropout
            # masks after --resume match the uninterrupted run.
            generator=torch.Generator().manual_seed(self.cfg.seed),
            prefetch_factor=4 if self.cfg.workers else None,
        )

    # -- the loop ------------------------------------------------------------------------------
    def _record_validation(self, runlog: RunLog) -> None:
        runlog.validation(self.pos.step, self.validate(self.student, self.device), self.student)

    def run(self) -> Path:
        """Train to the step budget, export the student; a full disk or a killed DataLoader
        worker is a one-line error (the last finished checkpoint is kept, and nothing
        half-written lies under a final name)."""
        try:
            return self._run()
        except RuntimeError as err:  # torch's, from its SIGCHLD handler or the loader
            if not str(err).startswith("DataLoader worker"):
                raise
            why = str(err).strip().rstrip(".")
            raise RunInterrupted(
                f"{self.run_dir}: {why}; finished checkpoints are kept: rerun with --resume"
            ) from None
        except ConnectionError as err:  # a worker killed while handing over a batch's memory
            raise RunInterrupted(
                f"{self.run_dir}: DataLoader worker lost while handing over a batch "
                f"({err.strerror or err}); finished checkpoints are kept: rerun with --resume"
            ) from None
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            raise InputError(
                f"{self.run_dir}: disk full while training ({err.strerror}); finished checkpoints "
                "are kept: free space and rerun with --resume"
            ) from None
        finally:
            self.release()

    def _run(self) -> Path:
        if self.is_main:  # only now has the run really started (see `run_dir`)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.run_dir / CONFIG_NAME)
            if self.init_report is not None:
                self.init_report.save(self.run_dir / INIT_RECORD)
        runlog = RunLog(
            self.cfg, self.run_dir, self.pos.step if self.resumed else None, self.is_main
        )
        try:
            return self._train(runlog)
        finally:
            runlog.close()

    def _train(self, runlog: RunLog) -> Path:
        bar = tqdm(
            total=self.total_steps,
            initial=self.pos.step,
            desc="train",
            unit="step",
            disable=not (self.cfg.progress and self.is_main),
        )
        loader = self._loader()
        while self.pos.step < self.total_steps:
            try:
                self._epoch(loader, runlog, bar)
            except (InputError, OSError, RuntimeError) as err:  # bad input, full disk, dead
                # DataLoader worker (see `run`); a bug's RuntimeError keeps its traceback
                bar.close()  # so the error starts a line of its own
                raise unwrap_worker_error(err) from None
        if self.validate and self.is_main and self.pos.step % self.cfg.val_every != 0:
            self._record_validation(runlog)
        bar.close()
        final = self.run_dir / STUDENT_NAME
        if self.is_main:
            if self.pos.step % self.cfg.ckpt_every != 0:
                self.save_checkpoint()
            final = runlog.export(self.pos.step, self.student)
            from clipocr.train_student.curves import plot_curves

            plot_curves(runlog.history_path, self.run_dir / "curves.png")
        if self.world > 1:
            dist.barrier()
        return final

    def _epoch(self, loader: DataLoader, runlog: RunLog, bar: tqdm) -> None:
        """The rest of the current epoch (or of the step budget), then on to the next epoch.

        The epoch ends when its counted batches are done or when the stream ends, whichever
        comes first: a stream that ends early (a batch whose images all failed to decode) must
        not make the loop read the same finished epoch again and again.
        """
        self.stream.set_epoch(self.pos.epoch, self.pos.batch_in_epoch)
        tic, seen = time.perf_counter(), 0
        for batch in worker_safe_batches(loader):
            metrics = self.train_step(batch)
            self.pos.step += 1
            self.pos.batch_in_epoch += 1
            seen += len(batch["labels"])
            bar.update(1)
            if self.is_main and self.pos.step % self.cfg.log_every == 0:
                metrics = {k: float(v) for k, v in metrics.items()}
                metrics["lr"] = self.scheduler.get_last_lr()[0]
                metrics["samples_per_s"] = seen / (time.perf_counter() - tic)
                bar.set_postfix(
                    {k: f"{metrics[k]:.3g}" for k in metrics if k != "lr"}, refresh=False
                )
                runlog.write(self.pos.step, metrics)
            if self.validate and self.is_main and self.pos.step % self.cfg.val_every == 0:
                self._record_validation(runlog)
            if self.is_main and self.pos.step % self.cfg.ckpt_every == 0:
                self.save_checkpoint()
            if self.pos.step >= self.total_steps or self.pos.batch_in_epoch >= self.steps_per_epoch:
                break
        else:
            if self.pos.batch_in_epoch < self.steps_per_epoch:
                if self.pos.batch_in_epoch == 0:
                    raise InputError(
                        f"{self.cfg.shards}: epoch {self.pos.epoch} yielded no batch for rank "
                        f"{self.rank} (are all its images undecodable?)"
                    )
                log.warning(
                    "epoch %d ended after %d of the %d batches counted (undecodable images)",
                    self.pos.epoch,
                    self.pos.batch_in_epoch,
                    self.steps_per_epoch,
                )
        if self.pos.step < self.total_steps or self.pos.batch_in_epoch >= self.steps_per_epoch:
            self.pos.epoch += 1
            self.pos.batch_in_epoch = 0
