"""The fault cases (kill -9, stalled or killed processes, concurrent runs, a full disk):
each must be survived with nothing lost. Run by `faults.py`."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from fault_kit import (
    Work,
    children,
    clear_error,
    clip,
    group_dirs,
    poll_until,
    samples_digest,
    spawn,
    verify_ok,
    wait,
    writer_pid,
)


def f_kill_prepare(w: Work) -> tuple[bool, str]:
    out = w.path("kill-prepare")
    proc = spawn(["prepare", "--lmdb", w.big, "--out", out, "--shard-size", 100])
    hit = poll_until(lambda: (out / "shard-000003.tar").exists(), proc)
    if not hit or (out / "shards.json").exists():
        wait(proc, 60)
        return False, "not injected: prepare finished before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = clip("prepare", "--lmdb", w.big, "--out", out, "--shard-size", 100)
    if rerun.returncode != 0:
        return False, f"rerun rc {rerun.returncode}: {rerun.stderr[-150:]}"
    same = samples_digest(out) == samples_digest(w.big_ref)
    return same, "rerun equals an uninterrupted prepare" if same else "samples differ"


def _cache_until(w: Work, name: str, when: Callable[[Path], object], **kw) -> tuple:
    store = w.path(name)
    proc = spawn(["cache-teacher", "--shards", w.shards, "--out", store, *w.cache_args(**kw)],
                 log=store.with_suffix(".log"))  # fmt: skip
    return store, proc, poll_until(lambda: when(store), proc)


def _finish_cache(w: Work, store: Path, expect_done: int | None = None) -> tuple[bool, str]:
    rerun = clip("cache-teacher", "--shards", w.shards, "--out", store, *w.cache_args())
    if rerun.returncode != 0:
        return False, f"rerun rc {rerun.returncode}: {rerun.stderr[-150:]}"
    ok, note = verify_ok(store, w.shards)
    if expect_done is not None and f"({expect_done} already done" not in rerun.stdout:
        return False, f"work lost: {rerun.stdout.strip()[-120:]}"
    return ok, note


def f_kill_cache_driver(w: Work) -> tuple[bool, str]:
    store, proc, hit = _cache_until(w, "kill-cache-driver", lambda s: group_dirs(s, tmp=False))
    if not hit:
        wait(proc, 60)
        return False, "not injected: no group finished while the run was alive"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(group_dirs(store, tmp=False))
    ok, note = _finish_cache(w, store, expect_done=done_before)
    return ok, f"killed after {done_before} group(s); {note}"


def f_kill_dask_worker(w: Work) -> tuple[bool, str]:
    store, proc, pid = _cache_until(w, "kill-dask-worker", writer_pid, processes=True)
    if not pid:
        wait(proc, 60)
        return False, "not injected: no worker seen writing"
    os.kill(int(pid), signal.SIGKILL)
    rc = wait(proc, 180)
    if rc != 0:
        return False, f"run rc {rc} after losing a worker (see {store.with_suffix('.log')})"
    ok, note = verify_ok(store, w.shards)
    return ok, f"run completed without the killed worker; {note}"


def f_kill_loader_worker(w: Work) -> tuple[bool, str]:
    def loader_workers(store: Path) -> list[int]:
        pid = writer_pid(store)
        return children(pid) if pid else []

    store, proc, kids = _cache_until(w, "kill-loader-worker", loader_workers, workers=2)
    if not kids:
        wait(proc, 60)
        return False, "not injected: no decoding worker seen"
    os.kill(kids[0], signal.SIGKILL)
    rc = wait(proc, 200)
    if rc == 124:
        return False, "hung after a decoding worker was killed"
    ok, note = verify_ok(store, w.shards) if rc == 0 else _finish_cache(w, store)
    return ok, f"run rc {rc}; {note}"


def f_two_runs(w: Work) -> tuple[bool, str]:
    store = w.path("two-runs")
    procs = [spawn(["cache-teacher", "--shards", w.shards, "--out", store, *w.cache_args()],
                   log=store.with_name(f"{store.name}-{i}.log")) for i in range(2)]  # fmt: skip
    rcs = [wait(p, 240) for p in procs]
    ok, note = verify_ok(store, w.shards)
    ok = ok and rcs == [0, 0] and not group_dirs(store, tmp=True)
    return ok, f"exit codes {rcs}; {note}"


def f_stalled_writer(w: Work) -> tuple[bool, str]:
    store, first, pid = _cache_until(w, "stalled-writer", writer_pid)
    if not pid:
        wait(first, 60)
        return False, "not injected: no writer seen"
    os.kill(int(pid), signal.SIGSTOP)
    try:
        second = clip("cache-teacher", "--shards", w.shards, "--out", store, *w.cache_args())
        ok, note = verify_ok(store, w.shards)
    finally:
        os.kill(int(pid), signal.SIGCONT)
    rc = wait(first, 120)
    ok2, note2 = verify_ok(store, w.shards)
    ok = ok and ok2 and second.returncode == 0 and rc == 0
    return ok, f"second run rc {second.returncode}, {note}; stalled run resumed rc {rc}, {note2}"


def f_disk_full_prepare(w: Work) -> tuple[bool | None, str]:
    out = w.tmpfs_path("prepare")
    if out is None:
        return None, "skipped: cannot mount a tmpfs (needs root)"
    w.resize("2m")
    full = clip("prepare", "--lmdb", w.big, "--out", out, "--shard-size", 100)
    handled, line = clear_error(full, "disk full")
    w.resize("64m")
    rerun = clip("prepare", "--lmdb", w.big, "--out", out, "--shard-size", 100)
    same = rerun.returncode == 0 and samples_digest(out) == samples_digest(w.big_ref)
    shutil.rmtree(out)
    return handled and same, f"{line}; after freeing space the rerun equals the reference: {same}"


def f_disk_full_cache(w: Work, processes: bool = False) -> tuple[bool | None, str]:
    """One line naming the store (no dask tracebacks, no retries), the finished groups kept and
    sound, and the rerun after freeing space completes the store."""
    out = w.tmpfs_path("store-processes" if processes else "store")
    if out is None:
        return None, "skipped: cannot mount a tmpfs (needs root)"
    size = sum(p.stat().st_size for p in w.store.rglob("*") if p.is_file())
    w.resize(str(max(size // 2, 64 * 1024)))
    full = clip("cache-teacher", "--shards", w.shards, "--out", out,
                *w.cache_args(processes=processes))  # fmt: skip
    handled, line = clear_error(full, "disk full while caching the teacher")
    handled = handled and "Compute Failed" not in full.stderr
    partial = clip("cache-teacher", "--verify", out)  # complete groups only, all sound
    w.resize("64m")
    ok, note = _finish_cache(w, out)
    shutil.rmtree(out)
    ok = ok and handled and partial.returncode == 0
    return ok, f"{line}; partial store verifies: {partial.returncode == 0}; rerun {note}"


def f_prepare_rerun_without_index(w: Work) -> tuple[bool, str]:
    out = w.path("no-index")
    shutil.copytree(w.big_ref, out)
    (out / "shards.json").unlink()
    rerun = clip("prepare", "--lmdb", w.big, "--out", out, "--shard-size", 100)
    same = rerun.returncode == 0 and samples_digest(out) == samples_digest(w.big_ref)
    return same, "same shards and index as before (no extra empty shard)" if same else "differs"


def f_sigstop_cache_writer(w: Work) -> tuple[bool, str]:
    """A dask worker process stopped (SIGSTOP) mid-shard for longer than a batch takes, then
    continued: the run completes and verifies, nothing written twice or lost."""
    store, proc, pid = _cache_until(w, "sigstop-writer", writer_pid, processes=True)
    if not pid:
        wait(proc, 60)
        return False, "not injected: no worker seen writing"
    os.kill(int(pid), signal.SIGSTOP)
    time.sleep(15)
    os.kill(int(pid), signal.SIGCONT)
    rc = wait(proc, 240)
    ok, note = verify_ok(store, w.shards)
    return ok and rc == 0, f"run rc {rc} after 15 s stopped; {note}"


def _synth_digest(db: Path) -> str:
    """Labels and image bytes of every sample of an LMDB, in order."""
    from clipocr.pipeline.lmdb_io import LmdbReader

    reader = LmdbReader(db)
    try:
        h = hashlib.sha256()
        for _, image, label in reader.iter_raw():
            h.update(f"{label}\t".encode() + hashlib.sha256(image or b"").digest())
        return h.hexdigest()[:16]
    finally:
        reader.close()


def f_kill_synth(w: Work) -> tuple[bool, str]:
    """synth writes under a hidden temporary name: killed, it leaves no LMDB behind, and the
    rerun renders the same images as an uninterrupted run."""
    out = w.path("kill-synth") / "lmdb"
    proc = spawn(["synth", "--out", out, "--num", 2400, "--seed", 1])

    def temps() -> list[Path]:
        return list(out.parent.glob(f".{out.name}.tmp-*")) if out.parent.exists() else []

    if not poll_until(lambda: temps() and any((t / "data.mdb").exists() for t in temps()), proc):
        wait(proc, 120)
        return False, "not injected: synth finished before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if out.exists():
        return False, "a partial LMDB is under the final name"
    rerun = clip("synth", "--out", out, "--num", 2400, "--seed", 1)
    if rerun.returncode != 0:
        return False, f"rerun rc {rerun.returncode}: {rerun.stderr.strip()[-150:]}"
    same = _synth_digest(out) == _synth_digest(w.big)
    return same, f"rerun equals an uninterrupted synth: {same} ({len(temps())} stale temp folder)"


def f_disk_full_synth(w: Work) -> tuple[bool | None, str]:
    out = w.tmpfs_path("synth")
    if out is None:
        return None, "skipped: cannot mount a tmpfs (needs root)"
    w.resize("1m")
    full = clip("synth", "--out", out, "--num", 2400, "--seed", 1)
    handled, line = clear_error(full, "could not write the LMDB")
    left = [p.name for p in w.tmpfs.iterdir()]
    w.resize("64m")
    rerun = clip("synth", "--out", out, "--num", 2400, "--seed", 1)
    same = rerun.returncode == 0 and _synth_digest(out) == _synth_digest(w.big)
    shutil.rmtree(out, ignore_errors=True)
    ok = handled and not left and same
    return ok, f"{line}; left behind: {left or 'nothing'}; rerun equals the reference: {same}"


FAULTS = [
    ("kill -9 prepare mid-run, rerun", f_kill_prepare),
    ("kill -9 cache-teacher driver, rerun", f_kill_cache_driver),
    ("kill -9 a dask worker mid-shard", f_kill_dask_worker),
    ("kill -9 a decoding DataLoader worker", f_kill_loader_worker),
    ("two simultaneous cache-teacher runs", f_two_runs),
    ("stalled (SIGSTOP) writer + second run", f_stalled_writer),
    ("disk full in prepare", f_disk_full_prepare),
    ("disk full in cache-teacher", f_disk_full_cache),
    ("disk full in cache-teacher, worker processes",
     lambda w: f_disk_full_cache(w, processes=True)),
    ("prepare rerun with shards.json lost", f_prepare_rerun_without_index),
    ("SIGSTOP / SIGCONT a cache writer (alone)", f_sigstop_cache_writer),
    ("kill -9 synth mid-run, rerun", f_kill_synth),
    ("disk full in synth", f_disk_full_synth),
]  # fmt: skip
