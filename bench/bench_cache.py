"""Teacher-cache throughput: end-to-end `cache_shard` ÷ teacher-forward-only, in one run.

    .venv/bin/python bench/bench_cache.py                       # CPU, ViT-B/16 random init
    .venv/bin/python bench/bench_cache.py --device cuda --num 40000 --shard-size 5000 \
        --batch-size 256 --workers 8                            # GPU, bf16 autocast

*Forward-only* is `Teacher.features` on one pre-decoded uint8 batch already on the device, same
batch size and autocast, repeated. *End-to-end* is the real runner over real shards: tar read,
decode in DataLoader workers, forward, float16 copy-out and Zarr/zstd writes in the writer thread,
timed from opening each group to its commit. Goal: end-to-end ≥ 0.85 × forward-only, i.e. the
I/O hides behind the forward pass. Forward-only is measured before and after end-to-end and the
two are averaged, so a drift in the (shared) machine's load shows up instead of skewing the ratio.

To show where end-to-end loses time it also times each stage alone: tar read (serial, before a
shard's first batch), decode (per process), writer-only (float16 copies + Zarr/zstd, one thread),
and the bound they imply.

Also prints bytes/sample of the store written and the projection for MJ+ST (15.9 M samples):
disk = bytes/sample × 15.9 M; hours = 15.9 M ÷ end-to-end rate on the device measured. Random
weights give the right speed but not the right compressibility: a trained CLIP's features may
compress differently, so the disk figure is indicative until measured with real weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import zarr
from _common import (
    TEACHERS,
    cache_all,
    dir_bytes,
    load_line,
    machine_line,
    make_shards,
    setup_torch,
    sync,
)

from clipocr.cache_teacher.runner import RunnerConfig
from clipocr.cache_teacher.teacher import Teacher, load_teacher, store_spec
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.preprocess import load_uint8
from clipocr.pipeline.shards import iter_shard_raw, shard_paths
from clipocr.pipeline.teacher_store import TeacherStoreWriter, parse_codec

MJ_ST_SAMPLES = 15.9e6


def forward_only(
    teacher: Teacher, images: torch.Tensor, labels: list[str], runner: RunnerConfig, reps: int
) -> float:
    """Samples/s of `teacher.features` on one device-resident batch, `reps` times."""
    device = images.device
    sync(device)
    tic = time.perf_counter()
    for _ in range(reps):
        with runner.autocast(device):
            teacher.features(images, labels)
    sync(device)
    return reps * len(labels) / (time.perf_counter() - tic)


def writer_only(
    teacher: Teacher, feats: dict[str, torch.Tensor], root: Path, codec: str, num: int
) -> float:
    """Samples/s of the writer thread's work alone: device → float16 numpy copies, then
    `ShardGroupWriter.append` (encode, zstd, chunk writes) and the commit, for `num` samples.

    Mirrors `runner._WriterThread.run` for a lossless codec (float32 copies for lossy ones)."""
    lossless = parse_codec(codec).lossless
    writer = TeacherStoreWriter(root, store_spec(teacher, codec))
    b = len(feats["text_emb"])
    tic = time.perf_counter()
    with writer.open_shard("shard-000000") as group:
        for start in range(0, num, b):
            arrays = {
                k: v.cpu().numpy() if k == "text_lengths" else
                (v.half() if lossless else v.float()).cpu().numpy()
                for k, v in feats.items()
            }  # fmt: skip
            group.append([f"shard-000000/{start + i:06d}" for i in range(b)], arrays)
        count = group.commit([])
    return count / (time.perf_counter() - tic)


def first_batch(shards: Path, size: int) -> tuple[torch.Tensor, list[str], float, float]:
    """Decode the first `size` samples (cycling if the shards hold fewer). Also the in-process
    rates in samples/s of reading the tars (which the runner does serially, before a shard's
    first batch) and of decoding (which its DataLoader workers share)."""
    tic = time.perf_counter()
    raw = [s for p in shard_paths(shards) for s in iter_shard_raw(p)]
    tar_rate = len(raw) / (time.perf_counter() - tic)
    tic = time.perf_counter()
    decoded = [load_uint8(data, draft=True) for _, data, _ in raw]
    decode_rate = len(raw) / (time.perf_counter() - tic)
    picks = [i % len(raw) for i in range(size)]
    images = torch.stack([decoded[i] for i in picks])
    return images, [raw[i][2] for i in picks], tar_rate, decode_rate


def store_breakdown(root: Path) -> tuple[dict[str, int], int, int]:
    """Bytes per array name over all groups, total samples and total text rows."""
    by_array: dict[str, int] = defaultdict(int)
    count = rows = 0
    for group in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        attrs = zarr.open_group(str(group), mode="r").attrs
        count += int(attrs["count"])
        rows += int(attrs.get("text_rows", 0))
        for arr in group.iterdir():
            if arr.is_dir():
                by_array[arr.name] += dir_bytes(arr)
    return dict(by_array), count, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=1024, help="samples rendered and cached")
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader decode workers")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto = bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--codec", default="zstd")
    parser.add_argument("--teacher", choices=sorted(TEACHERS), default="vit-b-16")
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="forward-only batches per measurement (default num/batch/4)",
    )
    args = parser.parse_args()
    device = setup_torch(args.threads, args.device)
    runner = RunnerConfig(args.batch_size, args.workers, args.precision, args.codec)
    reps = args.reps or max(2, args.num // args.batch_size // 4)
    charset = Charset.from_name("36")
    print(f"machine      {machine_line(device, args.threads)}")
    print(
        f"setup        teacher {args.teacher} ({TEACHERS[args.teacher].model}), batch "
        f"{args.batch_size}, workers {args.workers}, precision {args.precision}, codec "
        f"{args.codec}, {args.num} samples in shards of {args.shard_size}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        shards = make_shards(Path(tmp), args.num, args.shard_size, charset)
        print(f"data         rendered + prepared in {time.perf_counter() - tic:.1f} s")
        teacher = load_teacher(TEACHERS[args.teacher], device)
        images, labels, tar_rate, decode_rate = first_batch(shards, args.batch_size)
        images = images.to(device)
        forward_only(teacher, images, labels, runner, 2)  # warm-up: kernels, allocator
        with runner.autocast(device):
            feats = teacher.features(images, labels)
        write_rate = writer_only(teacher, feats, Path(tmp) / "scratch", args.codec, args.num)
        del feats

        fwd_before = forward_only(teacher, images, labels, runner, reps)
        print(f"forward-only {fwd_before:10.1f} samples/s  (before; {load_line()})")
        store_root = Path(tmp) / "store"
        e2e_s, results = cache_all(teacher, shards, store_root, runner)
        cached = sum(r["count"] for r in results)
        e2e = cached / e2e_s
        print(f"end-to-end   {e2e:10.1f} samples/s  ({load_line()})")
        fwd_after = forward_only(teacher, images, labels, runner, reps)
        print(f"forward-only {fwd_after:10.1f} samples/s  (after; {load_line()})")

        fwd = 0.5 * (fwd_before + fwd_after)
        per_shard = ", ".join(f"{r['count'] / r['seconds']:.1f}" for r in results)
        print(f"per shard    {per_shard} samples/s (each timed open → commit)")
        print(f"tar read     {tar_rate:10.1f} samples/s in one process (serial, before each shard)")
        print(f"decode       {decode_rate:10.1f} samples/s in one process (bytes → uint8 32×128)")
        print(f"writer-only  {write_rate:10.1f} samples/s in one thread (→ float16, zstd, Zarr)")
        bound = min(decode_rate * max(args.workers, 1), fwd, write_rate)
        serial = 1 / (1 / tar_rate + 1 / bound)
        print(
            f"bound        min(decode × {max(args.workers, 1)} workers, forward, writer) = "
            f"{bound:.1f} samples/s; with the serial tar read 1/(1/tar + 1/min) = {serial:.1f} "
            "(stages overlap; on a CPU they also share the cores)"
        )
        print(f"RATIO        end-to-end / forward-only = {e2e / fwd:.3f}  (goal ≥ 0.85)")

        by_array, count, rows = store_breakdown(store_root)
        total = dir_bytes(store_root)
        dims = teacher.dims
        raw16 = 2 * (
            3 * dims["image_tokens"] * dims["image"] + 3 * rows / count * dims["text"] + dims["emb"]
        )
        print(
            f"store        {total / count / 1e3:.1f} KB/sample ({args.codec}; float16 before "
            f"compression {raw16 / 1e3:.1f} KB; {rows / count:.2f} text rows/sample)"
        )
        image = sum(v for k, v in by_array.items() if k.startswith("image_s"))
        text = sum(v for k, v in by_array.items() if k.startswith("text_s"))
        emb = by_array.get("text_emb", 0)
        print(
            f"             image taps {image / count / 1e3:.1f} KB, text taps "
            f"{text / count / 1e3:.1f} KB, text_emb {emb / count:.0f} B, "
            f"keys+offsets+metadata {(total - image - text - emb) / count:.0f} B"
        )
    hours = MJ_ST_SAMPLES / e2e / 3600
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"
    print(
        f"projection   MJ+ST {MJ_ST_SAMPLES / 1e6:.1f} M samples: disk = bytes/sample × N = "
        f"{total / count * MJ_ST_SAMPLES / 1e12:.2f} TB; time = N / end-to-end rate = "
        f"{hours:,.1f} h on {where}"
        + ("" if device.type == "cuda" else " (one-H100 hours: rerun with --device cuda)")
    )


if __name__ == "__main__":
    main()
