"""Shared pieces of the cache and training benchmarks: data, teacher choice, store, timing.

Both benchmarks build their inputs the way the real jobs do (rendered words → LMDB → tar shards
→ teacher store written by the real cache runner), so the measured paths are the production ones.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import torch

from clipocr.cache_teacher.runner import RunnerConfig, cache_shard
from clipocr.cache_teacher.teacher import DEFAULT_DEMO_TEACHER, Teacher, TeacherConfig, store_spec
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.shards import prepare_shards, shard_paths
from clipocr.pipeline.synth import render_lmdb
from clipocr.pipeline.teacher_store import TeacherStoreWriter, shard_group_name

TEACHERS = {
    # The paper's teacher; random weights run at the same speed and give the same shapes.
    "vit-b-16": TeacherConfig(model="ViT-B-16", pretrained=None),
    # The shipped demo teacher: 4-layer width-128 towers, the teacher a CPU run really uses.
    "demo": DEFAULT_DEMO_TEACHER,
}


def setup_torch(threads: int, device: str) -> torch.device:
    """Fix the intra-op thread count (reported, since the CPU is shared) and pick the device.

    A bare ``cuda`` gets its index: `Trainer` calls `torch.cuda.set_device`, which refuses a
    device without one."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock intervals measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_line(device: torch.device, threads: int) -> str:
    """One line naming the hardware the figures were taken on."""
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"CPU, {os.cpu_count()} cores visible"
    line = f"{hw}; torch {torch.__version__}; threads {threads}; {load_line()}"
    # The 1-minute load counts this process too, hence the + 1.
    if device.type == "cpu" and threads > 1 and os.getloadavg()[0] > (os.cpu_count() or 1) + 1:
        # Measured here: at load 4 on 2 cores, 2 intra-op threads ran a ViT-B/16 forward 2x and
        # a 4-layer teacher 10x slower than 1 thread, each op waiting for a descheduled thread.
        line += "\nWARNING   the CPU is oversubscribed: intra-op threads wait on each other; "
        line += "figures are unreliable, consider --threads 1"
    return line


def load_line() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def make_shards(root: Path, num: int, shard_size: int, charset: Charset, seed: int = 0) -> Path:
    """Render `num` words into an LMDB and prepare them into tar shards under `root/shards`."""
    db = root / "synth"
    render_lmdb(db, num=num, seed=seed, charset=charset, progress=False)
    out = root / "shards"
    prepare_shards([db], out, charset, shard_size, progress=False)
    return out


def cache_all(
    teacher: Teacher, shards: Path, store_root: Path, runner: RunnerConfig
) -> tuple[float, list[dict]]:
    """Cache every shard with the real runner, one group after another, as one dask task does.

    Returns the wall time from creating the store to the last commit, and the per-shard results
    (each with its own start-to-commit ``seconds``).
    """
    tic = time.perf_counter()
    writer = TeacherStoreWriter(store_root, store_spec(teacher, runner.codec))
    results = []
    for path in shard_paths(shards):
        with writer.open_shard(shard_group_name(path)) as group:
            results.append(cache_shard(teacher, group, path, runner))
    return time.perf_counter() - tic, results


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process, its live descendants and its reaped children."""
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.NoSuchProcess:  # ended (and will be counted once reaped) meanwhile
            continue
        total += c.user + c.system + c.children_user + c.children_system
    return total
