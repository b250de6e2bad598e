"""Training cost of distillation: cached and online step time ÷ plain, and loader supply ÷ demand.

    .venv/bin/python bench/bench_train.py                        # CPU, tiny preset, demo teacher
    .venv/bin/python bench/bench_train.py --device cuda --preset small   # GPU, ViT-B/16 teacher

Measured side by side in one run, same preset, batch and pre-loaded batches (data loading
excluded), each timing `Trainer.train_step` (autocast, forward, backward, clipping, AdamW, LR
schedule):

* **plain**: the student alone (`--no-distill`: DistillSystem without heads);
* **cached**: heads + LCL with the targets that the store join put in the batch (goal ≤ 1.15 ×
  plain: the heads are cheap and the targets are already there);
* **online**: the teacher's `features()` on the batch's (augmented) uint8 images and labels every
  step, then the same heads step: the cost the cache removes, expected well above 1 × plain;
* **cached+device_aug**: cached with `augment_on="device"`: the step augments its batch first.

The variants run interleaved in rounds and each is summarised by its median step, so load drift
on a shared machine hits them all alike. The teacher is the random-init ViT-B/16 for the
small/base presets and the shipped demo teacher (4-layer width-128 open_clip towers) for test/
tiny; `--teacher` overrides. The store is written by the real cache runner with that teacher, so
the join reads real Zarr data.

Then the loader: a `DistillStream` joined with the store (decode + augmentation + collate) in a
DataLoader with W workers, over one epoch, in samples/s per worker; and the same without the store
(what plain training reads), which isolates the join's cost. Training demand = batch ÷ cached
step time; supply per worker ÷ demand > 1 means one worker keeps up, otherwise about
⌈demand ÷ supply⌉ workers are needed. The loader runs three ways: with store (join + host
augmentation, `--augment-on host`), no store (host augmentation alone), and store, no aug (the
join alone: what the workers of an `--augment-on device` run do).

**split**: where a worker's time goes, per sample, serially in this process over one epoch, each
stage as the stream runs it — tar read, store read (the join less the tar read), decode + resize,
host augmentation (the decode with augmentation less the decode), collate; 1 ÷ their sum is the
supply one worker can reach.

**augment**: host augmentation (`StudentAugment`, PIL, one image at a time on the decoded crop,
as a worker runs it) against device augmentation (`DeviceAugment` on the batch's uint8 tensor on
`--device`, as the trainer runs it), interleaved in rounds on the same batches, in samples/s.

`--parts` picks sections (default all; `split,augment` needs no training steps).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import TEACHERS, cache_all, load_line, machine_line, make_shards, median, setup_torch
from _common import sync as device_sync
from torch.utils.data import DataLoader

from clipocr.cache_teacher.runner import RunnerConfig
from clipocr.cache_teacher.teacher import Teacher, load_teacher
from clipocr.pipeline.augment import StudentAugment
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.precision import autocast
from clipocr.pipeline.preprocess import decode_image
from clipocr.pipeline.teacher_store import STAGES_IMAGE, STAGES_TEXT, TeacherStore
from clipocr.train_student.config import TrainConfig
from clipocr.train_student.dataset import DistillStream, StreamConfig, collate
from clipocr.train_student.device_augment import DeviceAugment
from clipocr.train_student.trainer import Trainer

PLAIN_KEYS = ("images", "labels", "keys", "tgt_in", "tgt_out")
DEFAULTS = {  # per device: preset, batch, samples, shard size, loader workers, rounds, warm-up
    "cpu": ("tiny", 32, 1024, 256, "1", 7, 1),
    "cuda": ("small", 160, 16000, 2000, "1,4,8", 30, 5),
}


def trainer(
    args: argparse.Namespace, out: Path, store: Path | None, augment_on: str = "host"
) -> Trainer:
    cfg = TrainConfig(
        shards=str(args.shards),
        teacher_store=str(store) if store else None,
        out=str(out),
        preset=args.preset,
        distill=store is not None,
        batch_size=args.batch_size,
        max_steps=1_000_000,  # the OneCycle schedule must outlast the measured steps
        workers=0,
        threads=args.threads,  # the Trainer sets CPU threads itself; keep the measured setting
        device=args.device,
        progress=False,
        augment_on=augment_on,
    )
    return Trainer(cfg)


def online_targets(
    teacher: Teacher, batch: dict, device: torch.device, runner: RunnerConfig
) -> dict:
    """The batch with the targets a cache would hold, computed now by the teacher."""
    images = batch["images"].to(device, non_blocking=True)
    with autocast(runner.precision, device):
        feats = teacher.features(images, batch["labels"])
    width = batch["tgt_in"].shape[1]
    if feats["text_s1"].shape[1] != width:
        raise RuntimeError(f"teacher text width {feats['text_s1'].shape[1]} != decoder {width}")
    out = {k: batch[k] for k in PLAIN_KEYS}
    # `features` runs under inference_mode, whose tensors autograd refuses to save: clone.
    for name in (*STAGES_IMAGE, *STAGES_TEXT, "text_emb"):
        out[name] = feats[name].clone()
    out["text_mask"] = torch.arange(width, device=device)[None] < feats["text_lengths"][:, None]
    return out


def time_step(step: Callable[[dict], object], batch: dict, device: torch.device) -> float:
    device_sync(device)
    tic = time.perf_counter()
    step(batch)
    device_sync(device)
    return time.perf_counter() - tic


def loader_rate(
    args: argparse.Namespace,
    charset: Charset,
    workers: int,
    store: TeacherStore | None,
    augment: bool,
) -> tuple[float, float, int]:
    """One epoch through a DataLoader: (samples/s overall, seconds to first batch, samples)."""
    stream = DistillStream(
        args.shards,
        charset,
        StreamConfig(args.batch_size, args.shuffle_buffer, augment, seed=0),
        store=store,
    )
    stream.num_workers = max(workers, 1)
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=args.device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
    )
    tic = time.perf_counter()
    first, n = None, 0
    for batch in loader:
        if first is None:
            first = time.perf_counter() - tic
        n += len(batch["labels"])
    return n / (time.perf_counter() - tic), first or 0.0, n


def stage_split(args: argparse.Namespace, charset: Charset, store: TeacherStore) -> None:
    """Per-sample seconds of each stage a worker runs, serially, over one epoch (see module)."""
    cfg = StreamConfig(args.batch_size, 1, False, seed=0)
    clean = DistillStream(args.shards, charset, cfg, store=store)
    augmented = DistillStream(
        args.shards, charset, StreamConfig(args.batch_size, 1, True, seed=0), store=store
    )
    bare = DistillStream(args.shards, charset, cfg)
    names = list(clean.counts)
    tic = time.perf_counter()
    tar_only = list(bare._joined(names))
    tar_s = time.perf_counter() - tic
    tic = time.perf_counter()
    joined = list(clean._joined(names))
    join_s = time.perf_counter() - tic
    n = len(joined)
    tic = time.perf_counter()
    decoded = [clean._decode(dict(sample)) for sample in joined]
    decode_s = time.perf_counter() - tic
    tic = time.perf_counter()
    for sample in joined:
        augmented._decode(dict(sample))
    augment_s = time.perf_counter() - tic - decode_s
    decoded = [d for d in decoded if d is not None]
    tic = time.perf_counter()
    for i in range(0, len(decoded), args.batch_size):
        collate(decoded[i : i + args.batch_size], charset)
    collate_s = time.perf_counter() - tic
    stages = {
        "tar read": tar_s / len(tar_only),
        "store read": (join_s - tar_s) / n,
        "decode+resize": decode_s / n,
        "augment (host)": augment_s / n,
        "collate": collate_s / n,
    }
    total = sum(stages.values())
    print(f"split     one process, serial, {n} samples; {load_line()}")
    for name, sec in stages.items():
        print(f"  {name:15s} {sec * 1e6:8.0f} µs/sample  {sec / total:6.1%}")
    print(f"  {'sum':15s} {total * 1e6:8.0f} µs/sample = {1 / total:7.1f} samples/s per worker")


def augment_rates(args: argparse.Namespace, batches: list[dict], device: torch.device) -> None:
    """Host vs device augmentation on the same batches, interleaved rounds, medians."""
    host, on_device = StudentAugment(), DeviceAugment()
    crops = [[decode_image(s, draft=True) for s in b["data"]] for b in batches]
    images = [b["images"].to(device) for b in batches]

    def run_host(i: int) -> None:
        for j, img in enumerate(crops[i]):
            host(img, i * 10_000 + j)

    def run_device(i: int) -> None:
        on_device(images[i], i)
        device_sync(device)

    times: dict[str, list[float]] = {"host": [], "device": []}
    run_device(0)  # warm-up (first-call allocations, CUDA kernels)
    for r in range(args.rounds):
        for name, fn in (("host", run_host), ("device", run_device)):
            tic = time.perf_counter()
            fn(r % len(batches))
            times[name].append(time.perf_counter() - tic)
    rate = {k: args.batch_size / median(v) for k, v in times.items()}
    print(f"augment   batch {args.batch_size}, {args.rounds} rounds; {load_line()}")
    print(f"  host   StudentAugment (PIL, per crop, 1 process)  {rate['host']:9.1f} samples/s")
    print(
        f"  device DeviceAugment ({device}, {torch.get_num_threads()} threads, batched) "
        f"{rate['device']:9.1f} samples/s"
    )
    print(f"RATIO     device / host augmentation = {rate['device'] / rate['host']:.2f}")


def raw_batches(args: argparse.Namespace, charset: Charset, store: TeacherStore) -> list[dict]:
    """Four full clean batches (uint8 images) that also keep each sample's encoded bytes."""
    stream = DistillStream(
        args.shards, charset, StreamConfig(args.batch_size, 1, False, seed=0), store=store
    )
    samples = list(stream._joined(list(stream.counts)))
    out = []
    for i in range(0, len(samples) - args.batch_size + 1, args.batch_size):
        group = samples[i : i + args.batch_size]
        decoded = [stream._decode(dict(s)) for s in group]
        batch = collate([d for d in decoded if d is not None], charset)
        batch["data"] = [s["data"] for s in group]
        out.append(batch)
        if len(out) == 4:
            break
    return out


def step_times(
    args: argparse.Namespace,
    root: Path,
    teacher: Teacher,
    device: torch.device,
    runner: RunnerConfig,
) -> float:
    """Plain vs cached vs online `train_step`, interleaved rounds; returns the training demand
    (samples/s of the cached step)."""
    kind = device.type
    plain = trainer(args, root / "plain", None)
    cached = trainer(args, root / "cached", root / "store")
    online = trainer(args, root / "online", root / "store")
    on_device = trainer(args, root / "device", root / "store", augment_on="device")
    heads = sum(p.numel() for p in cached.system.heads.parameters())
    t_params = sum(p.numel() for p in teacher.parameters())
    print(
        f"models    student {plain.student.num_params() / 1e6:.2f} M params, heads "
        f"{heads / 1e6:.2f} M, teacher {t_params / 1e6:.1f} M"
    )
    stream = cached.stream
    batches = []
    for b in stream:
        if len(b["labels"]) == args.batch_size:
            batches.append(b)
        if len(batches) == 4:
            break
    if kind == "cuda":  # as the trainer's DataLoader hands them over (pin_memory=True)
        batches = [
            {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()}
            for b in batches
        ]
    plain_batches = [{k: b[k] for k in PLAIN_KEYS} for b in batches]

    variants = {
        "plain": (plain.train_step, plain_batches),
        "cached": (cached.train_step, batches),
        "cached+device_aug": (on_device.train_step, batches),
        "online": (
            lambda b: online.train_step(online_targets(teacher, b, device, runner)),
            batches,
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step, bs in variants.values():
        for i in range(args.warmup):
            time_step(step, bs[i % len(bs)], device)
    for r in range(args.rounds):
        for name, (step, bs) in variants.items():
            times[name].append(time_step(step, bs[r % len(bs)], device))
    print(f"steps     {load_line()}")
    med = {name: median(t) for name, t in times.items()}
    for name, t in times.items():
        print(
            f"  {name:17s} {med[name] * 1e3:9.1f} ms/step median (min {min(t) * 1e3:.1f}, max "
            f"{max(t) * 1e3:.1f}, n={len(t)}), {args.batch_size / med[name]:8.1f} samples/s"
        )
    print(f"RATIO     cached / plain = {med['cached'] / med['plain']:.3f}  (goal ≤ 1.15)")
    print(f"RATIO     online / plain = {med['online'] / med['plain']:.3f}  (expected ≫ 1)")
    device_aug = med["cached+device_aug"] / med["cached"]
    print(f"RATIO     cached+device_aug / cached = {device_aug:.3f}  (augmenting in the step)")

    return args.batch_size / med["cached"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default=None, help="student preset (cpu: tiny, cuda: small)")
    parser.add_argument("--batch-size", type=int, default=None, help="cpu: 32, cuda: 160")
    parser.add_argument("--num", type=int, default=None, help="samples rendered and cached")
    parser.add_argument("--shard-size", type=int, default=None)
    parser.add_argument("--teacher", choices=sorted(TEACHERS), default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds, one step of each variant "
        "per round (cpu: 7, cuda: 30)"
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per variant")
    parser.add_argument("--loader-workers", default=None, help="comma list (cpu: 1, cuda: 1,4,8)")
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument(
        "--parts", default="steps,loader,split,augment", help="comma list of sections to run"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    preset, batch, num, shard_size, loader_workers, rounds, warmup = DEFAULTS[kind]
    args.rounds = args.rounds or rounds
    args.warmup = args.warmup if args.warmup is not None else warmup
    args.preset = args.preset or preset
    args.batch_size = args.batch_size or batch
    args.num = args.num or num
    args.shard_size = args.shard_size or shard_size
    args.teacher = args.teacher or ("demo" if args.preset in ("test", "tiny") else "vit-b-16")
    workers_list = [int(w) for w in (args.loader_workers or loader_workers).split(",")]
    device = setup_torch(args.threads, args.device)
    args.device = str(device)
    charset = Charset.from_name("36")
    runner = RunnerConfig(
        batch_size=256 if kind == "cuda" else 64, workers=4 if kind == "cuda" else 1
    )
    print(f"machine   {machine_line(device, args.threads)}")
    print(
        f"setup     preset {args.preset}, batch {args.batch_size}, teacher {args.teacher} "
        f"({TEACHERS[args.teacher].model}), {args.num} samples in shards of {args.shard_size}, "
        f"parts {args.parts}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tic = time.perf_counter()
        args.shards = make_shards(root, args.num, args.shard_size, charset)
        teacher = load_teacher(TEACHERS[args.teacher], device)
        cache_s, _ = cache_all(teacher, args.shards, root / "store", runner)
        print(f"data      shards + store (real cache runner: {cache_s:.1f} s) in "
              f"{time.perf_counter() - tic:.1f} s")  # fmt: skip

        store = TeacherStore(root / "store")
        demand = step_times(args, root, teacher, device, runner) if "steps" in parts else None
        if "loader" in parts:
            shown = f"{demand:.1f} samples/s" if demand else "not measured (--parts)"
            print(f"loader    training demand (cached) {shown}; {load_line()}")
            # "with store" / "no store" (both with host augmentation) as before: gpu_check.py
            # parses them; "store, no aug" is what an --augment-on device run's workers do.
            ways = (("with store   ", store, True), ("no store     ", None, True),
                    ("store, no aug", store, False))  # fmt: skip
            for w in workers_list:
                for label, st, augment in ways:
                    rate, first, n = loader_rate(args, charset, w, st, augment)
                    per = rate / max(w, 1)
                    line = (
                        f"  W={w} {label} {rate:8.1f} samples/s = {per:8.1f} per worker "
                        f"({n} samples, first batch after {first:.2f} s)"
                    )
                    if st is not None and demand:
                        need = math.ceil(demand / per)
                        line += f"; supply/worker ÷ demand = {per / demand:.2f} (≈ {need} needed)"
                    print(line)
        if "split" in parts:
            stage_split(args, charset, store)
        if "augment" in parts:
            augment_rates(args, raw_batches(args, charset, store), device)
        print(f"done      {load_line()}")


if __name__ == "__main__":
    main()
