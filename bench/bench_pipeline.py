"""Throughput of the data pipeline on rendered words: `prepare`, the shard reader and the cache
job's decode pool, each before (commit 670bbf1, `_reader_before.py`) and now, side by side.

    .venv/bin/python bench/bench_pipeline.py --num 10000 --workers 2 --reps 3

* **prepare**: LMDB → tar shards (no re-encode), samples/s and MB/s (skipped with ``--shards``).
* **stages**, CPU-µs per sample in this process: tar read (webdataset vs the stream reader),
  decode (bytes → uint8 3×32×128 on the training ``draft`` path), and whether the two decodes
  give identical pixels.
* **reader**, one process, decode in-process (`ShardReader`): samples/s of wall time and per
  CPU-second. Goal (DESIGN): ≥ 2,000 samples/s per process.
* **cache loader** with ``--workers`` decode processes over all shards, as one cache runner
  reads them: before, a DataLoader per shard over the shard read whole; now, one `DecodePool`.
  Wall rate, samples per CPU-second of the whole process tree (runner + workers, reaped or
  live), the runner's own CPU-µs per sample, and the time from a shard's start to its first
  batch.
* **draft**: how many of the shards' JPEGs the reduced-scale decode touches at all, and on
  ``--large`` crops (the shards' first images upscaled 4×, JPEG q90, as large real crops are)
  the decode cost full vs draft and how far the 32×128 pixels move.

Variants alternate within each of ``--reps`` rounds (before, now, before, now, …) and the
median is reported, with the load average around each: the cores are shared, so ratios taken
in one run are the figures to trust, and CPU-time rates are steadier than wall rates.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import _reader_before as before
import numpy as np
import psutil
import torch
from _common import load_line, tree_cpu_seconds
from PIL import Image

from clipocr.cache_teacher.decode_pool import DecodePool
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.preprocess import decode_uint8
from clipocr.pipeline.shards import ShardReader, iter_shard_raw, prepare_shards, shard_paths
from clipocr.pipeline.synth import render_lmdb


def timed(fn) -> dict:
    """Run `fn` (returns a sample count, maybe with extras); wall, tree-CPU and own-CPU rates."""
    load0, wall0 = load_line(), time.perf_counter()
    cpu0, own0 = tree_cpu_seconds(), time.process_time()
    result = fn()
    n, extra = result if isinstance(result, tuple) else (result, {})
    wall, cpu = time.perf_counter() - wall0, tree_cpu_seconds() - cpu0
    own = time.process_time() - own0
    return {"samples": n, "per_s": n / wall, "per_cpu_s": n / cpu, "own_cpu_us": 1e6 * own / n,
            "load": f"{load0} → {load_line()}", **extra}  # fmt: skip


def side_by_side(variants: dict, reps: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            runs[name].append(timed(fn))
    return runs


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_runs(title: str, runs: dict[str, list[dict]], extra: str | None = None) -> None:
    (a, ra), (b, rb) = runs.items()
    for name, rs in runs.items():
        line = (f"{title:13s}{name:7s} {med(rs, 'per_s'):8,.0f} samples/s wall, "
                f"{med(rs, 'per_cpu_s'):8,.0f} per CPU-s, runner {med(rs, 'own_cpu_us'):6.1f} "
                f"CPU-µs/sample")  # fmt: skip
        if extra:
            line += f", {extra} {med(rs, extra) * 1e3:6.1f} ms"
        print(line + f"  (loads {'; '.join(r['load'] for r in rs)})")
    print(f"{'RATIO':13s}{b} ÷ {a}: wall {med(rb, 'per_s') / med(ra, 'per_s'):.2f}×, "
          f"per CPU-s {med(rb, 'per_cpu_s') / med(ra, 'per_cpu_s'):.2f}×")  # fmt: skip


# -- stages --------------------------------------------------------------------------------------


def cpu_us(fn, n: int, reps: int) -> float:
    best = []
    for _ in range(reps):
        tic = time.process_time()
        fn()
        best.append(time.process_time() - tic)
    return 1e6 * statistics.median(best) / n


def stages(paths: list[Path], reps: int) -> dict:
    path = paths[0]
    raw = list(iter_shard_raw(path))
    datas = [d for _, d, _ in raw]
    out = np.empty((3, 32, 128), np.uint8)
    same = sum(np.array_equal(before.load_uint8(d, draft=True).numpy(),
                              decode_uint8(d, draft=True)) for d in datas)  # fmt: skip
    figures = {
        "tar_before_us": cpu_us(
            lambda: sum(1 for _ in before.iter_shard_raw(path)), len(raw), reps
        ),
        "tar_now_us": cpu_us(lambda: sum(1 for _ in iter_shard_raw(path)), len(raw), reps),
        "decode_before_us": cpu_us(
            lambda: [before.load_uint8(d, draft=True) for d in datas], len(datas), reps
        ),  # fmt: skip
        "decode_now_us": cpu_us(
            lambda: [decode_uint8(d, draft=True, out=out) for d in datas], len(datas), reps
        ),  # fmt: skip
        "identical_pixels": f"{same}/{len(datas)}",
    }
    print(f"stages       tar read {figures['tar_before_us']:.1f} → {figures['tar_now_us']:.1f} "
          f"CPU-µs/sample; decode {figures['decode_before_us']:.1f} → "
          f"{figures['decode_now_us']:.1f} CPU-µs/sample; identical pixels "
          f"{figures['identical_pixels']} ({load_line()})")  # fmt: skip
    return figures


# -- reader and cache loader ---------------------------------------------------------------------


def reader_variants(shard_dir: Path, paths: list[Path]) -> dict:
    def old() -> int:
        return sum(1 for p in paths for _ in before.read_shard(p))

    def new() -> int:
        return sum(1 for _ in ShardReader(shard_dir))

    return {"before": old, "now": new}


def loader_variants(paths: list[Path], workers: int, batch: int) -> dict:
    def run(batches_of) -> tuple[int, dict]:
        n, first = 0, []
        for path in paths:
            tic = time.perf_counter()
            for i, b in enumerate(batches_of(path)):
                if i == 0:
                    first.append(time.perf_counter() - tic)
                n += len(b["keys"] if isinstance(b, dict) else b.keys)
        return n, {"first_batch_s": statistics.mean(first)}

    def old() -> tuple[int, dict]:
        return run(lambda p: before.loader_batches(p, workers, batch, 120.0))

    def new() -> tuple[int, dict]:
        pool = DecodePool(workers, batch)  # started once for every shard, inside the timing
        try:
            return run(pool.batches)
        finally:
            pool.close()

    return {"before": old, "now": new}


# -- draft ---------------------------------------------------------------------------------------


def draft_effect(paths: list[Path], large: int, reps: int) -> dict:
    """Which shard JPEGs draft touches (only ≥ 512×128 ones decode at a reduced scale), and on
    `large` upscaled crops its speed-up and the change in the 32×128 pixels."""
    touched = total = 0
    for path in paths:
        for _, data, _ in iter_shard_raw(path):
            img = Image.open(io.BytesIO(data))
            total += 1
            touched += img.format == "JPEG" and img.width >= 512 and img.height >= 128
    crops = []
    for _, data, _ in list(iter_shard_raw(paths[0]))[:large]:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        buf = io.BytesIO()
        img.resize((img.width * 4, img.height * 4), Image.BICUBIC).save(buf, "JPEG", quality=90)
        crops.append(buf.getvalue())
    full = np.stack([decode_uint8(d) for d in crops]).astype(np.int16)
    drafted = np.stack([decode_uint8(d, draft=True) for d in crops]).astype(np.int16)
    diff = np.abs(full - drafted)
    figures = {
        "shard_jpegs_touched": f"{touched}/{total}",
        "large_full_us": cpu_us(lambda: [decode_uint8(d) for d in crops], len(crops), reps),
        "large_draft_us": cpu_us(
            lambda: [decode_uint8(d, draft=True) for d in crops], len(crops), reps
        ),  # fmt: skip
        "large_mean_abs_diff": float(diff.mean()),
        "large_max_abs_diff": int(diff.max()),
        "large_pixels_changed": float((diff > 0).mean()),
        "large_size": f"{np.median([Image.open(io.BytesIO(d)).width for d in crops]):.0f} px wide",
    }
    print(
        f"draft        shard JPEGs decoded at reduced scale: {figures['shard_jpegs_touched']} "
        f"(pixels unchanged for the rest); on {len(crops)} 4× crops "
        f"({figures['large_size']}): decode {figures['large_full_us']:.0f} → "
        f"{figures['large_draft_us']:.0f} CPU-µs, 32×128 pixels changed "
        f"{100 * figures['large_pixels_changed']:.0f} %, mean |Δ| "
        f"{figures['large_mean_abs_diff']:.2f}, max {figures['large_max_abs_diff']} (of 255)"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=10000)
    parser.add_argument("--shard-size", type=int, default=5000)
    parser.add_argument("--shards", type=Path, default=None, help="prepared shards to read "
                        "instead of rendering --num words")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="cache loader decode workers")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--large", type=int, default=200, help="upscaled crops for the draft")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures: dict = {"start": time.strftime("%Y-%m-%d %H:%M"), "setup": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}  # fmt: skip
    print(f"machine      {psutil.cpu_count()} cores; torch 1 thread; {load_line()}")
    with tempfile.TemporaryDirectory() as tmp:
        shard_dir = args.shards
        if shard_dir is None:
            cs = Charset.from_name("36")
            db = Path(tmp) / "synth"
            render_lmdb(db, num=args.num, seed=0, charset=cs, progress=False)
            mb = sum(f.stat().st_size for f in db.iterdir()) / 1e6
            shard_dir = Path(tmp) / "shards"
            tic = time.perf_counter()
            index = prepare_shards([db], shard_dir, cs, args.shard_size, progress=False)
            prep_s = time.perf_counter() - tic
            tar_mb = sum(f.stat().st_size for f in shard_dir.glob("*.tar")) / 1e6
            figures["prepare"] = {"per_s": index.num_samples / prep_s, "mb_s": tar_mb / prep_s}
            print(
                f"prepare      {index.num_samples / prep_s:,.0f} samples/s, "
                f"{tar_mb / prep_s:.1f} MB/s (LMDB {mb:.1f} MB → shards {tar_mb:.1f} MB)"
            )
        paths = shard_paths(shard_dir)
        for path in paths:
            path.read_bytes()  # into the page cache, so the first variant is not the cold one
        print(f"data         {len(ShardReader(shard_dir))} samples in {len(paths)} shards")
        figures["stages"] = stages(paths, args.reps)
        figures["reader"] = side_by_side(reader_variants(shard_dir, paths), args.reps)
        print_runs("reader", figures["reader"])
        loader = side_by_side(loader_variants(paths, args.workers, args.batch_size), args.reps)
        figures["loader"] = loader
        print_runs(f"loader ×{args.workers}", loader, extra="first_batch_s")
        figures["draft"] = draft_effect(paths, args.large, args.reps)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
