"""Teacher-cache throughput: end-to-end `cache_shard` ÷ teacher-forward-only, in one run; or,
with ``--teacher null``, the pipeline's own capacity on 1 and more processes.

    .venv/bin/python bench/bench_cache.py                       # CPU, ViT-B/16 random init
    .venv/bin/python bench/bench_cache.py --device cuda --num 40000 --shard-size 5000 \
        --batch-size 256 --workers 8                            # GPU, bf16 autocast
    .venv/bin/python bench/bench_cache.py --teacher null --num 8192 --shard-size 1024 \
        --workers 0 --threads 1 --processes 1,2 --pin           # pipeline capacity, 1 vs 2 cores

*Forward-only* is `Teacher.features` on one pre-decoded uint8 batch already on the device, same
batch size and autocast, repeated. *End-to-end* is the real runner over real shards: tar read,
decode in DataLoader workers, forward, copy-out and Zarr writes in the writer thread, timed from
opening each group to its commit. Goal: end-to-end ≥ 0.85 × forward-only, i.e. the I/O hides
behind the forward pass. Forward-only is measured before and after end-to-end and the two are
averaged, so a drift in the (shared) machine's load shows up instead of skewing the ratio.

To show where end-to-end loses time it also times each stage alone: tar read, decode (per
process), writer-only (device → host copies + encoding + Zarr writes, one thread), and the bound
they imply.

**Null teacher** (``--teacher null``, shapes of ``--null-shapes``): the same runner and store with
`NullTeacher`, which returns fixed features of the real teacher's shapes on the device, so decode
+ transfer + encode + write + commit are measured alone (issue 14: ≥ 15,000 samples/s on a
16-core node caches MJ+ST in < 20 min). Each entry of ``--processes`` runs that many runner
processes at once, each caching its share of the shards into one store (as dask workers do),
after a barrier; samples/s = all samples ÷ (last end − first start), CPU-ms/sample = CPU time of
the processes and their children (decode workers) ÷ samples. ``--pin`` puts process i on core
i (use with ``--workers 0``, so one process is one core). The cores a 15,000 samples/s node
needs follow from CPU-ms/sample.

``--text-layout`` (default ``table``, as ``cache-teacher``): the text tower's rows go into the
store's text table once per distinct label before the shards are cached (timed apart and
reported as ``text table``), and the shards are cached through the image taps alone, each
sample getting a reference; ``ragged`` stores text rows per sample as format 1 did. Shard
writers are given the shard's count (``shards.json``), as `run_cache` gives it.

Also prints bytes/sample of the store written and the projection for MJ+ST (15.9 M samples):
disk = bytes/sample × 15.9 M; hours = 15.9 M ÷ end-to-end rate on the device measured. Random
weights give the right speed but not the right compressibility. ``--json PATH`` also writes the
figures as JSON (`bench/gpu_check.py` collects them); ``--shards DIR`` caches prepared shards
instead of rendering ``--num`` words.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
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
    tree_cpu_seconds,
)

from clipocr.cache_teacher.label_table import shard_labels, write_text_table
from clipocr.cache_teacher.null_teacher import NullTeacher, load_null_teacher
from clipocr.cache_teacher.runner import RunnerConfig, cache_shard
from clipocr.cache_teacher.teacher import ImageTaps, Teacher, load_teacher, store_spec
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.precision import autocast
from clipocr.pipeline.preprocess import IMG_H, IMG_W, load_uint8
from clipocr.pipeline.shards import iter_shard_raw, load_index, shard_paths
from clipocr.pipeline.teacher_store import TeacherStoreWriter, parse_codec, shard_group_name

MJ_ST_SAMPLES = 15.9e6
NODE_RATE = 15_000  # samples/s a node must supply and store to cache MJ+ST in < 20 min
PROBE_SAMPLES = 2048  # samples read and decoded alone for the tar / decode rates


def forward_only(
    teacher: Teacher, images: torch.Tensor, labels: list[str], runner: RunnerConfig, reps: int
) -> float:
    """Samples/s of `teacher.features` on one device-resident batch, `reps` times."""
    device = images.device
    sync(device)
    tic = time.perf_counter()
    for _ in range(reps):
        with autocast(runner.precision, device):
            teacher.features(images, labels)
    sync(device)
    return reps * len(labels) / (time.perf_counter() - tic)


def writer_only(
    teacher: Teacher,
    feats: dict[str, torch.Tensor],
    labels: list[str],
    root: Path,
    codec: str,
    num: int,
    layout: str = "ragged",
) -> float:
    """Samples/s of the writer thread's work alone: device → float16 numpy copies, then
    `ShardGroupWriter.append` (encode, zstd, chunk writes) and the commit, for `num` samples
    (their count known ahead, as `run_cache` knows it). In the ``table`` layout the batch's
    labels are put in the text table first (not timed) and only the image taps are written.

    Mirrors `runner._WriterThread.run` for a lossless codec (float32 copies for lossy ones)."""
    lossless = parse_codec(codec).lossless
    writer = TeacherStoreWriter(root, store_spec(teacher, codec, layout))
    if layout == "table":
        write_text_table(teacher, writer, sorted(set(labels)))
        feats = {k: v for k, v in feats.items() if k.startswith("image_s")}
    b = len(labels)
    keys = [f"shard-000000/{i:06d}" for i in range(num + b)]
    label_of = {k: labels[i % b] for i, k in enumerate(keys)}
    tic = time.perf_counter()
    with writer.open_shard("shard-000000", expected=-(-num // b) * b, labels=label_of) as group:
        for start in range(0, num, b):
            arrays = {
                k: v.cpu().numpy() if k == "text_lengths" else
                (v.half() if lossless else v.float()).cpu().numpy()
                for k, v in feats.items()
            }  # fmt: skip
            group.append(keys[start : start + b], arrays)
        count = group.commit([])
    return count / (time.perf_counter() - tic)


def first_batch(shards: Path, size: int) -> tuple[torch.Tensor, list[str], float, float]:
    """The first `size` samples decoded (cycling if the shards hold fewer), and the in-process
    rates in samples/s of reading the tars and of decoding, over at least `PROBE_SAMPLES`."""
    tic = time.perf_counter()
    raw: list[tuple[str, bytes, str]] = []
    for path in shard_paths(shards):
        raw += iter_shard_raw(path)
        if len(raw) >= max(size, PROBE_SAMPLES):
            break
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


# ------------------------------------------------------------------------------------------------
# the real teacher: forward-only vs end-to-end


def run_teacher(
    args: argparse.Namespace, shards: Path, tmp: Path, device: torch.device, runner: RunnerConfig
) -> dict:
    """Forward-only, end-to-end and each stage alone for a real teacher; prints and returns."""
    num = sum(int(s["count"]) for s in load_index(shards)["shards"])
    reps = args.reps or max(2, num // args.batch_size // 4)
    teacher = load_teacher(TEACHERS[args.teacher], device)
    images, labels, tar_rate, decode_rate = first_batch(shards, args.batch_size)
    images = images.to(device)
    forward_only(teacher, images, labels, runner, 2)  # warm-up: kernels, allocator
    with autocast(runner.precision, device):
        feats = teacher.features(images, labels)
    write_num = args.writer_num or num
    write_rate = writer_only(teacher, feats, labels, tmp / "scratch", args.codec, write_num)
    del feats

    fwd_before = forward_only(teacher, images, labels, runner, reps)
    print(f"forward-only {fwd_before:10.1f} samples/s  (before; {load_line()})")
    store_root = tmp / "store"
    e2e_s, results = cache_all(teacher, shards, store_root, runner)
    cached = sum(r["count"] for r in results)
    e2e = cached / e2e_s
    print(f"end-to-end   {e2e:10.1f} samples/s  ({load_line()})")
    fwd_after = forward_only(teacher, images, labels, runner, reps)
    print(f"forward-only {fwd_after:10.1f} samples/s  (after; {load_line()})")

    fwd = 0.5 * (fwd_before + fwd_after)
    per_shard = [r["count"] / r["seconds"] for r in results]
    print(f"per shard    {', '.join(f'{r:.1f}' for r in per_shard)} samples/s (open → commit)")
    print(f"tar read     {tar_rate:10.1f} samples/s in one process")
    print(f"decode       {decode_rate:10.1f} samples/s in one process (bytes → uint8 32×128)")
    print(f"writer-only  {write_rate:10.1f} samples/s in one thread ({write_num} samples)")
    bound = min(decode_rate * max(args.workers, 1), fwd, write_rate)
    print(
        f"bound        min(decode × {max(args.workers, 1)} workers, forward, writer) = "
        f"{bound:.1f} samples/s; with the serial tar read 1/(1/tar + 1/min) = "
        f"{1 / (1 / tar_rate + 1 / bound):.1f} (stages overlap; on a CPU they share the cores)"
    )
    print(f"RATIO        end-to-end / forward-only = {e2e / fwd:.3f}  (goal ≥ 0.85)")

    by_array, count, rows = store_breakdown(store_root)
    total = dir_bytes(store_root)
    dims = teacher.dims
    raw16 = 2 * (
        3 * dims["image_tokens"] * dims["image"] + 3 * rows / count * dims["text"] + dims["emb"]
    )
    image = sum(v for k, v in by_array.items() if k.startswith("image_s"))
    text = sum(v for k, v in by_array.items() if k.startswith("text_s"))
    emb = by_array.get("text_emb", 0)
    print(
        f"store        {total / count / 1e3:.1f} KB/sample ({args.codec}; float16 before "
        f"compression {raw16 / 1e3:.1f} KB; {rows / count:.2f} text rows/sample)\n"
        f"             image taps {image / count / 1e3:.1f} KB, text taps "
        f"{text / count / 1e3:.1f} KB, text_emb {emb / count:.0f} B, "
        f"keys+offsets+metadata {(total - image - text - emb) / count:.0f} B"
    )
    hours = MJ_ST_SAMPLES / e2e / 3600
    print(
        f"projection   MJ+ST {MJ_ST_SAMPLES / 1e6:.1f} M samples: disk = bytes/sample × N = "
        f"{total / count * MJ_ST_SAMPLES / 1e12:.2f} TB; time = N / end-to-end rate = "
        f"{hours:,.1f} h on {device_name(device)}"
    )
    return {
        "samples": cached,
        "forward_only": fwd,
        "forward_only_before": fwd_before,
        "forward_only_after": fwd_after,
        "end_to_end": e2e,
        "ratio": e2e / fwd,
        "per_shard": per_shard,
        "tar_read": tar_rate,
        "decode": decode_rate,
        "writer_only": write_rate,
        "kb_per_sample": total / count / 1e3,
        "text_rows_per_sample": rows / count,
        "mjst_tb": total / count * MJ_ST_SAMPLES / 1e12,
        "mjst_hours": hours,
    }


# ------------------------------------------------------------------------------------------------
# the null teacher: the pipeline's capacity on P processes


def _capacity_worker(
    teacher: NullTeacher,
    shards: list[str],
    store: str,
    runner: RunnerConfig,
    device: str,
    threads: int,
    cpu: int | None,
    barrier,
    results,
    layout: str = "table",
    expected: dict[str, int] | None = None,
) -> None:
    """One runner process: warm up, wait for the others, cache `shards`, report."""
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        torch.set_num_threads(threads)
        dev = torch.device(device)
        teacher = teacher.to(dev)
        b = runner.batch_size
        with autocast(runner.precision, dev):  # CUDA context, the teacher's fixed features
            teacher.features(torch.zeros((b, 3, IMG_H, IMG_W), dtype=torch.uint8, device=dev),
                             ["a"] * b)  # fmt: skip
        writer = TeacherStoreWriter(store, store_spec(teacher, runner.codec, layout))
        runs = ImageTaps(teacher) if layout == "table" else teacher
        barrier.wait(timeout=600)
        cpu0, start = tree_cpu_seconds(), time.monotonic()
        count = 0
        for path in shards:  # as `orchestrate.run_shard` does
            name = shard_group_name(path)
            labels = shard_labels(path) if layout == "table" else None
            want = (expected or {}).get(name)
            with writer.open_shard(name, expected=want, labels=labels) as group:
                count += cache_shard(runs, group, Path(path), runner)["count"]
        sync(dev)
        end = time.monotonic()
        results.put({"count": count, "start": start, "end": end, "cpu": tree_cpu_seconds() - cpu0})
    except BaseException as err:
        barrier.abort()
        results.put({"error": f"{type(err).__name__}: {err}"})


def capacity(
    teacher: NullTeacher,
    shards: list[Path],
    store: Path,
    runner: RunnerConfig,
    device: torch.device,
    processes: int,
    threads: int,
    pin: bool,
    layout: str = "table",
) -> dict:
    """`processes` runner processes caching `shards` (split round-robin) at once into `store`;
    in the ``table`` layout the text table is filled first (timed apart: ``table_seconds``)."""
    if len(shards) < processes:
        raise SystemExit(f"{processes} processes need at least as many shards, not {len(shards)}")
    writer = TeacherStoreWriter(store, store_spec(teacher, runner.codec, layout))  # the manifest
    table_s, labels = 0.0, set()
    if layout == "table":
        tic = time.perf_counter()
        labels = set().union(*(shard_labels(p).values() for p in shards))
        write_text_table(teacher, writer, sorted(labels), runner.precision)
        table_s = time.perf_counter() - tic
    expected = {shard_group_name(s["name"]): int(s["count"])
                for s in load_index(shards[0].parent)["shards"]}  # fmt: skip
    # fork is cheapest on a CPU; a CUDA context does not survive a fork, so spawn there.
    ctx = mp.get_context("spawn" if device.type == "cuda" else "fork")
    cores = sorted(os.sched_getaffinity(0))
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(
            target=_capacity_worker,
            args=(
                teacher,
                [str(p) for p in shards[i::processes]],
                str(store),
                runner,
                str(device),
                threads,
                cores[i % len(cores)] if pin else None,
                barrier,
                results,
                layout,
                expected,
            ),
        )  # fmt: skip
        for i in range(processes)
    ]
    load_before = os.getloadavg()
    for p in procs:
        p.start()
    reports = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"capacity run with {processes} processes failed: {errors}")
    samples = sum(r["count"] for r in reports)
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    cpu = sum(r["cpu"] for r in reports)
    return {
        "processes": processes,
        "samples": samples,
        "seconds": wall,
        "samples_per_s": samples / wall,
        "cpu_ms_per_sample": 1e3 * cpu / samples,
        "cores_busy": cpu / wall,
        "text_layout": layout,
        "table_labels": len(labels),
        "table_seconds": table_s,
        "per_process": [
            {"samples": r["count"], "seconds": r["end"] - r["start"], "cpu_s": r["cpu"]}
            for r in reports
        ],
        "load_avg_before": list(load_before),
        "load_avg_after": list(os.getloadavg()),
    }


def null_stages(
    args: argparse.Namespace, shards: Path, tmp: Path, teacher: NullTeacher, runner: RunnerConfig
) -> dict:
    """Each stage alone in this process, as ms/sample: where a capacity run's CPU time goes."""
    images, labels, tar_rate, decode_rate = first_batch(shards, args.batch_size)
    with autocast(runner.precision, images.device):
        feats = teacher.features(images, labels)
    write_num = args.writer_num or PROBE_SAMPLES
    write_rate = writer_only(teacher, feats, labels, tmp / "scratch", args.codec, write_num,
                             args.text_layout)  # fmt: skip
    ms = {"tar_read": 1e3 / tar_rate, "decode": 1e3 / decode_rate, "writer": 1e3 / write_rate}
    print(
        "stages       " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items())
        + f" ms/sample alone (sum {sum(ms.values()):.3f}; {load_line()})"
    )  # fmt: skip
    return ms


def run_null(
    args: argparse.Namespace, shards: Path, tmp: Path, device: torch.device, runner: RunnerConfig
) -> dict:
    """The pipeline's capacity with the null teacher on each entry of ``--processes``."""
    teacher = load_null_teacher(TEACHERS[args.null_shapes], "cpu")
    print(f"null         shapes of {args.null_shapes}: {teacher.dims}")
    stages = null_stages(args, shards, tmp, teacher, runner)
    paths = shard_paths(shards)
    runs = []
    for i, n in enumerate(int(p) for p in args.processes.split(",")):
        run = capacity(teacher, paths, tmp / f"store-{i}", runner, device, n, args.threads,
                       args.pin, args.text_layout)  # fmt: skip
        runs.append(run)
        print(
            f"capacity     {n} process{'es' if n > 1 else '  '} {run['samples_per_s']:10.1f} "
            f"samples/s, {run['cpu_ms_per_sample']:.3f} CPU-ms/sample, {run['cores_busy']:.2f} "
            f"cores busy ({run['samples']} samples in {run['seconds']:.1f} s; load average "
            f"{run['load_avg_before'][0]:.2f} → {run['load_avg_after'][0]:.2f})"
            + (f"; text table {run['table_labels']} labels in {run['table_seconds']:.1f} s before"
               if args.text_layout == "table" else "")
        )  # fmt: skip
    by_n: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        by_n[run["processes"]].append(run["samples_per_s"])
    mean = {n: sum(v) / len(v) for n, v in by_n.items()}
    scaling = {str(n): mean[n] / mean[1] for n in mean} if 1 in mean else {}
    for n, s in scaling.items():
        if n != "1":
            print(f"RATIO        {n} ÷ 1 processes = {s:.2f}  (goal ≥ 1.8 for 2)")
    widest = max(runs, key=lambda r: r["processes"])
    cores = NODE_RATE * widest["cpu_ms_per_sample"] / 1e3
    print(
        f"node         {NODE_RATE:,} samples/s needs ≈ {cores:.1f} cores at "
        f"{widest['cpu_ms_per_sample']:.3f} CPU-ms/sample ({widest['processes']} processes)"
    )
    return {
        "stages": stages,
        "shapes": args.null_shapes,
        "dims": teacher.dims,
        "runs": runs,
        "scaling": scaling,
        "cores_for_node_rate": cores,
        "node_rate": NODE_RATE,
    }


# ------------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=1024, help="samples rendered and cached")
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--shards", type=Path, default=None, help="prepared shards to cache "
                        "instead of rendering --num words")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader decode workers")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto = bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--codec", default="zstd")
    parser.add_argument("--teacher", choices=sorted(TEACHERS) + ["null"], default="vit-b-16")
    parser.add_argument("--null-shapes", choices=sorted(TEACHERS), default="vit-b-16",
                        help="the real teacher whose shapes the null teacher returns")  # fmt: skip
    parser.add_argument("--processes", default="1,2", help="null teacher: comma list of "
                        "concurrent runner processes, one capacity run each")  # fmt: skip
    parser.add_argument("--pin", action="store_true", help="null teacher: process i on core i")
    parser.add_argument("--text-layout", choices=["table", "ragged"], default="table",
                        help="null teacher: text once per label (table) or per sample")  # fmt: skip
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="forward-only batches per measurement (default num/batch/4)",
    )
    parser.add_argument(
        "--writer-num",
        type=int,
        default=None,
        help="samples for the writer-only timing (default: all)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    device = setup_torch(args.threads, args.device)
    runner = RunnerConfig(
        batch_size=args.batch_size, workers=args.workers, precision=args.precision,
        codec=args.codec,
    )  # fmt: skip
    machine = machine_line(device, args.threads)
    print(f"machine      {machine}")
    print(
        f"setup        teacher {args.teacher}, batch {args.batch_size}, workers {args.workers}, "
        f"precision {args.precision}, codec {args.codec}, "
        + (f"shards {args.shards}" if args.shards else
           f"{args.num} samples in shards of {args.shard_size}")
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if shards is None:
            tic = time.perf_counter()
            shards = make_shards(Path(tmp), args.num, args.shard_size, Charset.from_name("36"))
            print(f"data         rendered + prepared in {time.perf_counter() - tic:.1f} s")
        run = run_null if args.teacher == "null" else run_teacher
        figures = run(args, shards, Path(tmp), device, runner)
    if args.json:
        setup = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        result = {"machine": machine, "device": device_name(device), "setup": setup, **figures}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
