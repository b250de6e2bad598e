"""What a distilled training step costs beyond a plain one, and where it goes (issue 20 item 3).

    .venv/bin/python bench/bench_distill_step.py                 # demo preset, batch 32, 1 thread
    .venv/bin/python bench/bench_distill_step.py --profile       # + torch.profiler op table

Three `Trainer.train_step`s on the same pre-loaded batches (data loading excluded), interleaved
round by round so load drift on a shared machine hits them alike, each summarised by its median:

* **plain**: the student alone (`--no-distill`);
* **distilled, autograd LCL**: the heads with LCL written as its formula and differentiated by
  autograd (`losses.lcl_autograd`: the implementation before the fused one);
* **distilled, fused LCL**: the heads with `losses.lcl` (the intra and inter terms as autograd
  Functions with hand-written gradients: same value and gradient, fewer N × N passes).

Wall time and the thread's CPU time are both reported: on a loaded machine the CPU time is the
steadier figure (one intra-op thread, so thread time = the step's own work). The store is
written by the real cache runner with the shipped demo teacher, as `make demo` does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import TEACHERS, cache_all, load_line, machine_line, make_shards, median, setup_torch

from clipocr.cache_teacher.runner import RunnerConfig
from clipocr.cache_teacher.teacher import load_teacher
from clipocr.pipeline.charset import Charset
from clipocr.train_student import losses
from clipocr.train_student.config import TrainConfig
from clipocr.train_student.trainer import Trainer

PLAIN_KEYS = ("images", "labels", "keys", "tgt_in", "tgt_out")


def trainer(args: argparse.Namespace, out: Path, store: Path | None) -> Trainer:
    cfg = TrainConfig(
        shards=str(args.shards),
        teacher_store=str(store) if store else None,
        out=str(out),
        preset=args.preset,
        distill=store is not None,
        batch_size=args.batch_size,
        lr=0.02,
        max_steps=1_000_000,  # the OneCycle schedule must outlast the measured steps
        workers=0,
        threads=args.threads,
        augment=False,
        progress=False,
    )
    return Trainer(cfg)


def timed(step, batch: dict, lcl) -> tuple[float, float]:
    """(wall, thread CPU) seconds of one step with `lcl` as the heads' loss."""
    losses_lcl, losses.lcl = losses.lcl, lcl
    try:
        wall, cpu = time.perf_counter(), time.thread_time()
        step(batch)
        return time.perf_counter() - wall, time.thread_time() - cpu
    finally:
        losses.lcl = losses_lcl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num", type=int, default=512, help="words rendered and cached")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="op table of the fused step")
    args = parser.parse_args()
    device = setup_torch(args.threads, "cpu")
    fused = losses.lcl
    print(f"machine   {machine_line(device, args.threads)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        args.shards = make_shards(root, args.num, 256, Charset.from_name("36"))
        teacher = load_teacher(TEACHERS["demo"], device)
        cache_all(teacher, args.shards, root / "store", RunnerConfig(batch_size=64, workers=1))
        plain = trainer(args, root / "plain", None)
        before = trainer(args, root / "before", root / "store")
        after = trainer(args, root / "after", root / "store")
        batches = [b for b, _ in zip(after.stream, range(8)) if len(b["labels"]) == args.batch_size]
        batches = batches[:4]
        rows = batches[0]["image_s1"].shape[0] * batches[0]["image_s1"].shape[1]
        text_rows = int(batches[0]["text_mask"].sum())
        print(
            f"setup     preset {args.preset}, batch {args.batch_size}, {args.threads} thread(s); "
            f"LCL rows per step: 3 image stages × {rows}, 3 text stages × {text_rows}, GAM "
            f"{args.batch_size}"
        )
        plain_batches = [{k: b[k] for k in PLAIN_KEYS} for b in batches]
        variants = {
            "plain": (plain.train_step, plain_batches, fused),
            "distilled, autograd LCL": (before.train_step, batches, losses.lcl_autograd),
            "distilled, fused LCL": (after.train_step, batches, fused),
        }
        for step, bs, lcl in variants.values():
            for i in range(args.warmup):
                timed(step, bs[i % len(bs)], lcl)
        walls: dict[str, list[float]] = {k: [] for k in variants}
        cpus: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(args.rounds):
            for name, (step, bs, lcl) in variants.items():
                wall, cpu = timed(step, bs[r % len(bs)], lcl)
                walls[name].append(wall)
                cpus[name].append(cpu)
        print(f"steps     median of {args.rounds} interleaved rounds; {load_line()}")
        base_wall, base_cpu = median(walls["plain"]), median(cpus["plain"])
        for name in variants:
            w, c = median(walls[name]), median(cpus[name])
            print(
                f"  {name:24s} wall {w * 1e3:7.1f} ms ({w / base_wall:4.2f}× plain)   CPU "
                f"{c * 1e3:7.1f} ms ({c / base_cpu:4.2f}× plain)   "
                f"{args.batch_size / c:6.1f} samples/CPU-s"
            )
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for r in range(5):
                    after.train_step(batches[r % len(batches)])
            table = prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=40
            )
            print(f"profile   distilled, fused LCL, 5 steps\n{table}")
        print(f"done      {load_line()}")


if __name__ == "__main__":
    with torch.inference_mode(False):
        main()
