"""How the paths of issue 22 grow: each measured at two sizes, with the exponent b of cost ∝ size^b.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale.py [--only cache,buffer,resume,table,mixing]
        [--work DIR]

* **cache** — ``cache-teacher`` outside the teacher at 320 and 3,200 shards (8 samples each,
  labels from a lexicon of 28 words per shard, tiny features so only the overhead is timed):
  the driver's label pass (`labels_of_shards`, per sample), and per shard task what
  `orchestrate.run_shard` does around the teacher — open the store, find the shard's temporary
  groups, label references from the per-process index, append, digest, commit — on a store
  holding that many groups. Also the label index's one build per worker process.
* **buffer** — a trainer DataLoader worker's memory (``RssAnon`` growth while it streams) with
  ViT-B/16-shaped features (17×768 image taps, text 512, table layout): shuffle buffer 250 vs
  1,000 samples, 8 open shards, and 1,000 with one open shard.
* **resume** — seconds to the first batch after skipping ¼ and ¾ of an epoch, per skipped sample.
* **table** — per process memory of the text table at 4,000 and 16,000 labels (ViT-B/16 text
  widths, 26 positions): private (anonymous) and mapped, the unpacked bytes per label (shared by
  every process of a node through the page cache) and the unpack time.
* **mixing** — one worker of 64 at MJ+ST scale (50 shards × 5,000 samples, batch 160): distinct
  shards and labels per batch for several open-shard / buffer settings and for a global shuffle,
  with labels i.i.d. from a 90 k lexicon (MJ-like) and, the worst case, shards cut from a
  label-sorted source.

The memory figures run in child processes (this file with ``--child``), so each starts clean.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _scale_data import (
    CS,
    TINY,
    VIT_B16,
    fill_groups,
    image_block,
    lexicon,
    make_shards,
    memory,
    spec,
    write_table,
)

from clipocr.cache_teacher.label_table import labels_of_shards, shard_labels
from clipocr.pipeline.shards import iter_shard_raw, shard_paths
from clipocr.pipeline.teacher_store import TeacherStore, TeacherStoreWriter, shard_digest
from clipocr.pipeline.teacher_store.location import Location
from clipocr.pipeline.teacher_store.table_parts import _CACHE, label_index
from clipocr.train_student.dataset import DistillStream, StreamConfig
from clipocr.train_student.mixing import plan


def exponent(c1: float, c2: float, s1: float, s2: float) -> float:
    return math.log(max(c2, 1e-12) / max(c1, 1e-12)) / math.log(s2 / s1)


def cpu() -> float:
    return time.process_time()


# -- cache-teacher overhead ---------------------------------------------------------------------
def _one_task(root: Path, path: Path) -> None:
    """What `run_shard` does around the teacher for one shard (tiny features)."""
    writer = TeacherStoreWriter(root, spec(TINY))
    name = path.stem
    if writer.is_complete(name):
        return
    block = image_block(TINY, 64)
    with writer.open_shard(name, expected=None) as group:
        for key, _, label in iter_shard_raw(path):  # the decode pool's batches bring labels
            group.give_labels([key], [label])
            group.append([key], {t: v[:1] for t, v in block.items()})
        group.commit(source=shard_digest(path))


def cache_overhead(work: Path, shards: int, shard_size: int = 8, tasks: int = 30) -> dict:
    root = work / f"cache-{shards}"
    words = lexicon(28 * shards, seed=shards)
    rng = random.Random(0)
    labels = [rng.choice(words) for _ in range(shards * shard_size)]
    shard_dir = make_shards(root, labels, shard_size)
    paths = shard_paths(shard_dir)
    t0 = cpu()
    found = labels_of_shards([str(p) for p in paths])
    distinct = set(found.labels())
    t_labels = cpu() - t0
    store = root / "store"
    writer = TeacherStoreWriter(store, spec(TINY))
    write_table(writer, sorted(distinct))
    for p in paths[tasks:]:  # the other groups: entries of the store root, as in a real run
        (store / p.stem).mkdir()
    _CACHE.clear()
    t0 = cpu()
    label_index(Location(store))  # once per worker process
    t_index = cpu() - t0
    t0 = cpu()
    listing = [Location(store).tmp_groups(paths[0].stem) for _ in range(20)]
    t_list = (cpu() - t0) / len(listing)
    for p in paths[tasks : tasks + 5]:  # warm-up (first-use imports, codecs), not timed
        shutil.rmtree(store / p.stem)
        _one_task(store, p)
    t0 = cpu()
    for p in paths[:tasks]:
        _one_task(store, p)
    t_task = (cpu() - t0) / tasks
    return {"shards": shards, "samples": len(labels), "labels": len(distinct),
            "label_pass_us_per_sample": 1e6 * t_labels / len(labels),
            "index_build_s": t_index, "listing_ms": 1e3 * t_list,
            "task_ms": 1e3 * t_task}  # fmt: skip


# -- trainer: buffer memory, resume, table -------------------------------------------------------
def build_trainer_store(work: Path, shards: int = 8, per_shard: int = 512) -> tuple[Path, Path]:
    root = work / "trainer"
    if (root / "store" / "manifest.json").exists():
        return root / "shards", root / "store"
    words = lexicon(2000, seed=1)
    rng = random.Random(1)
    shard_dir = make_shards(root, [rng.choice(words) for _ in range(shards * per_shard)],
                            per_shard)  # fmt: skip
    per = {p.stem: shard_labels(p) for p in shard_paths(shard_dir)}
    writer = TeacherStoreWriter(root / "store", spec(VIT_B16))
    write_table(writer, sorted({s for d in per.values() for s in d.values()}))
    fill_groups(writer, shard_dir, per)
    return shard_dir, root / "store"


def child_buffer(work: Path, buffer: int, open_shards: int) -> dict:
    shard_dir, store_dir = build_trainer_store(work)
    cfg = StreamConfig(batch_size=160, shuffle_buffer=buffer, augment=False,
                       open_shards=open_shards)  # fmt: skip
    stream = DistillStream(shard_dir, CS, cfg, store=TeacherStore(store_dir))
    base = memory()
    peak_anon = 0
    for batch in stream:
        peak_anon = max(peak_anon, memory()["RssAnon"])
        del batch
    return {"buffer": buffer, "open_shards": open_shards,
            "rss_anon_growth_mb": (peak_anon - base["RssAnon"]) / 1e6}  # fmt: skip


def child_resume(work: Path, skip_fraction: float) -> dict:
    """Per skipped sample: the epoch's order (`plan`, computed for every sample) and, where a
    shard still holds samples to come, passing it unread (tar members read past, store rows
    skipped by count); and the seconds to the first batch after the skip."""
    from clipocr.train_student.dataset import _ShardSamples

    shard_dir, store_dir = build_trainer_store(work)
    cfg = StreamConfig(batch_size=160, shuffle_buffer=1000, augment=False, open_shards=8)
    stream = DistillStream(shard_dir, CS, cfg, store=TeacherStore(store_dir))
    counts = list(stream.counts.values())
    t0 = cpu()
    plan(counts, 8, 1000, "x")
    plan_us = 1e6 * (cpu() - t0) / sum(counts)
    opened = []
    t0 = cpu()
    for name in stream.counts:
        opened.append(_ShardSamples(stream, name))  # opens its tar and its store group
    open_ms = 1e3 * (cpu() - t0) / len(opened)
    t0 = cpu()
    for shard, n in zip(opened, counts, strict=True):
        shard.skip(n)
    pass_us = 1e6 * (cpu() - t0) / sum(counts)
    stream.set_epoch(0, int(stream.batches_per_epoch() * skip_fraction))
    t0 = time.perf_counter()
    next(iter(stream))
    return {"first_s": time.perf_counter() - t0, "plan_us": plan_us, "pass_us": pass_us,
            "open_ms": open_ms}  # fmt: skip


def passed_unread(start: int, shards: int = 50, per_shard: int = 5000) -> tuple[int, int]:
    """Samples a worker of MJ+ST (50 shards × 5,000, 8 open, buffer 1,000) reads past unread
    when it resumes after `start` samples: those before the last sample still to come of each
    shard that has one (a shard without any is not opened), from the order alone; and the
    shards opened."""
    p = plan([per_shard] * shards, 8, 1000, "resume")
    needed = p.needed(start)
    total = opened = 0
    for s in range(shards):
        mine = p.shard == s
        wanted = p.index[mine & needed]
        if len(wanted):
            opened += 1
            total += int(np.sum(~needed[mine] & (p.index[mine] < wanted.max())))
    return total, opened


def child_table(work: Path, labels: int) -> dict:
    root = work / f"table-{labels}"
    if not (root / "manifest.json").exists():
        write_table(TeacherStoreWriter(root, spec(VIT_B16)), lexicon(labels, seed=labels))
    store = TeacherStore(root, table_cache=work / "table-cache")
    table = store.text_table()
    t0 = time.perf_counter()
    table.prepare()  # unpack (once per node) and map
    unpack = time.perf_counter() - t0
    base = memory()
    rng = np.random.default_rng(0)
    for row in rng.integers(0, labels, 5000).tolist():  # 5,000 samples' label rows
        table.sample(0, row)
    after = memory()
    flat = table.part(0).unpacked_bytes()
    return {"labels": labels, "unpack_s": unpack, "unpacked_bytes_per_label": flat / labels,
            "private_growth_mb": (after["RssAnon"] - base["RssAnon"]) / 1e6,
            "private_total_mb": after["RssAnon"] / 1e6,
            "mapped_resident_mb": after["RssFile"] / 1e6}  # fmt: skip


def in_child(work: Path, *args: object) -> dict:
    cmd = [sys.executable, __file__, "--work", str(work), "--child", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- mixing --------------------------------------------------------------------------------------
def mixing(shards: int = 50, per_shard: int = 5000, batch: int = 160) -> list[dict]:
    rng = np.random.default_rng(0)
    iid = rng.integers(0, 90_000, shards * per_shard)  # label of (shard s, index i): s*n + i
    # A label-sorted source: 15.9 M samples of 90 k words in order, cut into 3,180 shards, of
    # which this worker reads 50 drawn at random (as `assign_shards` does).
    ids = rng.choice(3180, shards, replace=False)
    where = (ids[:, None] * per_shard + np.arange(per_shard)[None]).reshape(-1)
    sorted_labels = (where * (90_000 / 15_900_000)).astype(np.int64)
    out = []
    settings = [("before: 1 open shard, buffer 1,000", 1, 1000), ("8 open shards, buffer 1,000",
                8, 1000), ("8 open shards, buffer 2,000", 8, 2000), ("16 open shards, buffer 2,000",
                16, 2000)]  # fmt: skip
    for name, k, b in settings:
        p = plan([per_shard] * shards, k, b, "mix")
        flat = (p.shard * per_shard + p.index)[p.emit]
        out.append(_diversity(name, flat, per_shard, batch, iid, sorted_labels))
    flat = rng.permutation(shards * per_shard)
    out.append(_diversity("global shuffle", flat, per_shard, batch, iid, sorted_labels))
    return out


def _diversity(name, flat, per_shard, batch, iid, sorted_labels) -> dict:
    n = len(flat) // batch * batch
    groups = flat[:n].reshape(-1, batch)

    def distinct(values: np.ndarray) -> float:
        return float(np.mean([len(np.unique(row)) for row in values]))

    return {
        "setting": name,
        "shards": distinct(groups // per_shard),
        "labels_iid": distinct(iid[groups]),
        "labels_sorted": distinct(sorted_labels[groups]),
    }


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="cache,buffer,resume,table,mixing")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--child", nargs="*", default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="clipocr-scale-"))
    if args.child is not None:
        kind, *rest = args.child
        fn = {"buffer": lambda: child_buffer(work, int(rest[0]), int(rest[1])),
              "resume": lambda: child_resume(work, float(rest[0])),
              "table": lambda: child_table(work, int(rest[0]))}[kind]  # fmt: skip
        print(json.dumps(fn()))
        return
    only = set(args.only.split(","))
    print(f"work folder {work}")
    if "cache" in only:
        a, b = cache_overhead(work, 320), cache_overhead(work, 3200)
        print("cache-teacher outside the teacher (CPU time, one process):")
        for key in ("label_pass_us_per_sample", "index_build_s", "listing_ms", "task_ms"):
            e = exponent(a[key], b[key], a["shards"], b["shards"])
            print(f"  {key:26s} {a[key]:10.3f} → {b[key]:10.3f}   exponent {e:+.2f}")
        print(f"  (labels {a['labels']} → {b['labels']}, samples {a['samples']} → {b['samples']})")
    if "buffer" in only:
        print("trainer worker, ViT-B/16 shapes, growth of RssAnon while streaming:")
        rows = [in_child(work, "buffer", buf, k) for buf, k in ((250, 1), (1000, 1), (1000, 8))]
        for r in rows:
            growth = r["rss_anon_growth_mb"]
            print(f"  buffer {r['buffer']:5d}, {r['open_shards']} open  {growth:8.1f} MB")
        per_sample = (rows[1]["rss_anon_growth_mb"] - rows[0]["rss_anon_growth_mb"]) / 750
        per_shard = (rows[2]["rss_anon_growth_mb"] - rows[1]["rss_anon_growth_mb"]) / 7
        print(
            f"  ≈ {1e3 * per_sample:.0f} KB per buffered sample, {per_shard:.0f} MB per open "
            f"shard, {rows[1]['rss_anon_growth_mb'] - 1000 * per_sample:.0f} MB fixed"
        )
    if "resume" in only:
        rows = [in_child(work, "resume", f) for f in (0.0, 0.75)]
        r = rows[1]
        print(f"  resume: order {r['plan_us']:.1f} CPU-µs per sample of the epoch, opening a "
              f"shard {r['open_ms']:.1f} CPU-ms, passing a sample unread {r['pass_us']:.1f} "
              f"CPU-µs; first batch after skipping ¾ of the epoch {r['first_s']:.2f} s (without "
              f"a skip {rows[0]['first_s']:.2f} s)")  # fmt: skip
        print("  MJ+ST worker (50 shards × 5,000): samples read past unread when resuming after")
        found = [(k, *passed_unread(k)) for k in (62_500, 187_500, 247_500)]
        for k, n, shards in found:  # a shard with samples to come is opened with or without
            cost = r["plan_us"] * 250_000 + r["pass_us"] * n
            print(f"    {k:7d} skipped: {n:6d} passed unread, {50 - shards} shards never "
                  f"opened → {cost / 1e6:.2f} CPU-s ({cost / k:.1f} µs/skipped)")  # fmt: skip
        e = exponent(found[0][1] + 1, found[1][1] + 1, found[0][0], found[1][0])
        print(f"    exponent of the samples passed unread in the samples skipped {e:+.2f}")
    if "table" in only:
        rows = [in_child(work, "table", d) for d in (4000, 16000)]
        for r in rows:
            print(
                f"  table {r['labels']:6d} labels: unpack {r['unpack_s']:.1f} s, "
                f"{r['unpacked_bytes_per_label'] / 1e3:.1f} KB/label unpacked (shared), "
                f"private +{r['private_growth_mb']:.1f} MB (total {r['private_total_mb']:.0f}),"
                f" mapped resident {r['mapped_resident_mb']:.0f} MB"
            )
        for key in ("private_growth_mb", "unpack_s"):
            e = exponent(rows[0][key], rows[1][key], 4000, 16000)
            print(f"  exponent of {key} in the labels {e:+.2f}")
    if "mixing" in only:
        print("mixing, one worker (50 shards × 5,000, batch 160): mean distinct per batch")
        print(f"  {'setting':36s} {'shards':>7s} {'labels iid':>11s} {'labels sorted':>14s}")
        for r in mixing():
            print(
                f"  {r['setting']:36s} {r['shards']:7.1f} {r['labels_iid']:11.1f} "
                f"{r['labels_sorted']:14.1f}"
            )


if __name__ == "__main__":
    main()
