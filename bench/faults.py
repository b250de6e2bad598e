"""Fault injection: the slow cases of the fault suite (issue 15), run as a user would meet them.

Every case runs the real `clipocr` commands as subprocesses on a small dataset rendered here
(`clipocr synth`), then checks one of two outcomes:

* a **fault** (kill -9, a killed or stalled process, two runs at once, a full disk) must be
  *survived with nothing lost*: the rerun / resume completes, `cache-teacher --verify --shards`
  passes, and results equal an uninterrupted run's (bit for bit for training);
* a **bad input** must be *handled*: exit code 1 or 2 with a one-line ``error: …`` (or, for
  `--verify`, a ``FAILED`` report naming the problem) and no traceback — or, where the design
  says so, a counted skip.

Prints a table and the totals; ``--json OUT`` writes them. The disk-full cases need a small
tmpfs (``mount -t tmpfs``, root only); without it they are skipped with a note. Everything runs
on one core with one thread per process (``taskset -c 0 python bench/faults.py``); every
process is bounded by a timeout and killed in the end.

    python bench/faults.py [--json faults.json] [--work DIR] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "clipocr" / "assets" / "teacher"
TEACHER_ARGS = ["--clip-model", TEACHER / "teacher.json",
                "--clip-pretrained", TEACHER / "teacher.safetensors"]  # fmt: skip
TRAIN_ARGS = ["--preset", "test", "--batch-size", 8, "--max-steps", 24, "--ckpt-every", 8,
              "--threads", 1, "--workers", 0, "--device", "cpu", "--seed", 0]  # fmt: skip
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
SPAWNED: list[subprocess.Popen] = []  # every process started, killed at the end


# -- processes ---------------------------------------------------------------------------------


def spawn(args: list[object], log: Path | None = None) -> subprocess.Popen:
    """`python -m clipocr ARGS` in its own process group (so it can be killed with children)."""
    out = log.open("w") if log else subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipocr", *map(str, args)], cwd=REPO, env=ENV, text=True,
        start_new_session=True, stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
    )  # fmt: skip
    SPAWNED.append(proc)
    return proc


def clip(*args: object, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `clipocr ARGS` to the end; past `timeout` it is killed and reported as rc 124."""
    proc = spawn(list(args))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, 124, out, err + "\n[hung: killed]")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return 124


def kill_all() -> None:
    for proc in SPAWNED:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def poll_until(test: Callable[[], object], proc: subprocess.Popen, timeout: float = 120) -> object:
    """`test()`'s first truthy value while `proc` still runs (None if it ended first, so the
    fault is reported as not injected instead of passing untested)."""
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        value = test()
        if value and proc.poll() is None:
            return value
        time.sleep(0.02)
    return None


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"tracker" not in cmd:
            found.append(int(stat.parent.name))
    return found


# -- checks --------------------------------------------------------------------------------------


def clear_error(done: subprocess.CompletedProcess[str], match: str = "") -> tuple[bool, str]:
    """Exit 1/2, an ``error: …`` line (containing `match`), no traceback."""
    err = done.stderr or ""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    last = lines[-1] if lines else (err.strip().splitlines() or [""])[-1]
    ok = done.returncode in (1, 2) and bool(lines) and "Traceback" not in err
    ok = ok and match.lower() in last.lower()
    return ok, f"rc {done.returncode}: {last[:150]}"


def verify_fails(done: subprocess.CompletedProcess[str], match: str = "") -> tuple[bool, str]:
    """`--verify` exit 1 with a FAILED report naming a PROBLEM (and containing `match`)."""
    problems = [line for line in done.stdout.splitlines() if line.startswith("PROBLEM")]
    ok = done.returncode == 1 and "FAILED" in done.stdout and bool(problems)
    ok = ok and "Traceback" not in done.stderr and match in "\n".join(problems)
    return ok, f"rc {done.returncode}: {(problems or [done.stderr.strip()[-150:]])[0][:150]}"


def refused(done: subprocess.CompletedProcess[str]) -> tuple[bool, str]:
    """Either an ``error: …`` line or a FAILED `--verify` report."""
    ok, note = clear_error(done)
    return (ok, note) if ok else verify_fails(done)


def verify_ok(store: Path, shards: Path) -> tuple[bool, str]:
    done = clip("cache-teacher", "--verify", store, "--shards", shards, timeout=120)
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return done.returncode == 0 and last == "OK", f"verify: {last[:100]}"


def samples_digest(shards: Path) -> str:
    """A digest of every sample (key, label, image bytes) in shard order, and the index counts."""
    from clipocr.pipeline.shards import iter_shard_raw, load_index, shard_paths

    h = hashlib.sha256()
    for path in shard_paths(shards):
        for key, image, label in iter_shard_raw(path):
            h.update(f"{key}\t{label}\t".encode() + hashlib.sha256(image).digest())
    index = load_index(shards)
    h.update(json.dumps([(s["name"], s["count"]) for s in index["shards"]]).encode())
    return h.hexdigest()[:16]


def same_student(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def lmdb_samples(path: Path, n: int) -> list[tuple[bytes, str]]:
    """The first `n` (image bytes, label) pairs of an STR LMDB."""
    from clipocr.pipeline.lmdb_io import LmdbReader

    reader = LmdbReader(path)
    try:
        return [(image, label) for _, (_, image, label) in zip(range(n), reader.iter_raw())]
    finally:
        reader.close()


def group_dirs(store: Path, tmp: bool) -> list[Path]:
    if not store.exists():
        return []
    return [p for p in store.iterdir() if p.is_dir() and p.name.startswith(".tmp-") == tmp]


def writer_pid(store: Path) -> int | None:
    """The pid of a process that has an unpublished group open in `store` now."""
    from clipocr.pipeline.teacher_store.location import Location
    from clipocr.pipeline.teacher_store.ownership import read_owner

    for tmp in group_dirs(store, tmp=True):
        owner = read_owner(Location(store), tmp.name)
        if owner is not None:
            return owner.pid
    return None


def chunk_file(store: Path, array: str = "image_s1") -> Path:
    """The biggest chunk file of `array` in the first group (metadata files excluded)."""
    group = sorted(group_dirs(store, tmp=False))[0]
    files = [p for p in (group / array).rglob("*") if p.is_file() and not p.name.startswith(".")]
    return max((p for p in files if p.name != "zarr.json"), key=lambda p: p.stat().st_size)


# -- the workspace -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    kind: str  # "fault" or "bad input"
    ok: bool | None  # None: skipped
    note: str
    seconds: float


class Work:
    """The shared dataset, built once: an LMDB, its shards, a teacher store, a reference run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lmdb = root / "data" / "lmdb"
        self.shards = root / "data" / "shards"
        self.store = root / "data" / "store"
        self.ref = root / "runs" / "ref"
        self.big = root / "data" / "big_lmdb"
        self.big_ref = root / "data" / "big_ref"
        self.tmpfs: Path | None = None
        self.n = 0

    def path(self, name: str) -> Path:
        self.n += 1
        return self.root / "cases" / f"{self.n:02d}-{name}"

    def build(self) -> None:
        """Render and prepare the data, cache it, train the reference run; a `--work` folder
        built before is reused (only its per-case folders are cleared)."""
        shutil.rmtree(self.root / "cases", ignore_errors=True)
        built = self.root / "built"
        if not built.exists():
            self._build()
            built.touch()
        self.tmpfs = self._mount(self.root / "tmpfs")

    def _build(self) -> None:
        for args in (
            ["synth", "--out", self.lmdb, "--num", 192, "--seed", 0],
            ["prepare", "--lmdb", self.lmdb, "--out", self.shards, "--shard-size", 32],
            ["synth", "--out", self.big, "--num", 2400, "--seed", 1],
            ["prepare", "--lmdb", self.big, "--out", self.big_ref, "--shard-size", 100],
            ["cache-teacher", "--shards", self.shards, "--out", self.store, *self.cache_args()],
            ["train", "--shards", self.shards, "--teacher-store", self.store, "--out", self.ref,
             *TRAIN_ARGS],
        ):  # fmt: skip
            done = clip(*args, timeout=300)
            if done.returncode != 0:
                sys.exit(f"setup failed: clipocr {args[0]}: {done.stderr[-2000:]}")

    def cache_args(self, processes: bool = False, workers: int = 0) -> list[object]:
        mode = "--dask-processes" if processes else "--dask-threads"
        return [*TEACHER_ARGS, "--device", "cpu", "--batch-size", 8, "--workers", workers,
                mode, "--dask-workers", 2 if processes else 1]  # fmt: skip

    def train_args(self, out: Path, store: Path | None = None, *more: object) -> list[object]:
        return ["train", "--shards", self.shards, "--teacher-store", store or self.store,
                "--out", out, *TRAIN_ARGS, *more]  # fmt: skip

    @staticmethod
    def _mount(where: Path) -> Path | None:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                              capture_output=True, text=True)  # fmt: skip
        return where if done.returncode == 0 else None

    def resize(self, size: str) -> None:
        assert self.tmpfs is not None
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.tmpfs)], check=True)

    def unmount(self) -> None:
        if self.tmpfs is not None:
            subprocess.run(["umount", str(self.tmpfs)], check=False)


# -- faults --------------------------------------------------------------------------------------


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


def f_kill_train(w: Work) -> tuple[bool, str]:
    out = w.path("kill-train")
    proc = spawn(w.train_args(out))
    hit = poll_until(lambda: (out / "checkpoints" / "step-00000008").is_dir(), proc)
    if not hit or proc.poll() is not None:
        wait(proc, 120)
        return False, "not injected: train ended before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = clip(*w.train_args(out, None, "--resume"))
    if resumed.returncode != 0:
        return False, f"resume rc {resumed.returncode}: {resumed.stderr[-150:]}"
    steps = [json.loads(x)["step"] for x in (out / "history.jsonl").read_text().splitlines()]
    same = same_student(out / "student.safetensors", w.ref / "student.safetensors")
    ok = same and len(steps) == len(set(steps))
    return ok, f"bit-identical to uninterrupted: {same}; history steps unique: {ok or same}"


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


def _tmpfs_case(w: Work, name: str) -> Path | None:
    if w.tmpfs is None:
        return None
    out = w.tmpfs / name
    return out


def f_disk_full_prepare(w: Work) -> tuple[bool | None, str]:
    out = _tmpfs_case(w, "prepare")
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


def f_disk_full_cache(w: Work) -> tuple[bool | None, str]:
    out = _tmpfs_case(w, "store")
    if out is None:
        return None, "skipped: cannot mount a tmpfs (needs root)"
    size = sum(p.stat().st_size for p in w.store.rglob("*") if p.is_file())
    w.resize(str(max(size // 2, 64 * 1024)))
    full = clip("cache-teacher", "--shards", w.shards, "--out", out, *w.cache_args())
    failed = full.returncode != 0 and "Traceback" not in full.stderr
    why = [line for line in full.stderr.splitlines() if "rror" in line][-1:]
    partial = clip("cache-teacher", "--verify", out)  # complete groups only, all sound
    w.resize("64m")
    ok, note = _finish_cache(w, out)
    shutil.rmtree(out)
    ok = ok and failed and partial.returncode == 0
    return ok, (
        f"full disk: rc {full.returncode} {why}, traceback: {'Traceback' in full.stderr}, "
        f"partial store verifies: {partial.returncode == 0}; rerun {note}"
    )


def f_disk_full_train(w: Work) -> tuple[bool | None, str]:
    out = _tmpfs_case(w, "run")
    if out is None:
        return None, "skipped: cannot mount a tmpfs (needs root)"
    ckpt = w.ref / "checkpoints" / "step-00000024"
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    w.resize(str(int(size * 1.6)))  # room for one checkpoint, not two
    full = clip(*w.train_args(out))
    handled, line = clear_error(full, "disk full")
    w.resize("64m")
    resumed = clip(*w.train_args(out, None, "--resume"))
    same = resumed.returncode == 0 and same_student(
        out / "student.safetensors", w.ref / "student.safetensors"
    )
    shutil.rmtree(out)
    return handled and same, f"{line}; resumed bit-identical: {same}"


def f_undecodable_sample(w: Work) -> tuple[bool, str]:
    """Issue 15 item 1: a truncated JPEG, listed missing in the store, must not hang train."""
    import io

    from PIL import Image

    from clipocr.pipeline.lmdb_io import LmdbWriter

    base = w.path("undecodable")
    base.mkdir(parents=True)
    with LmdbWriter(base / "lmdb") as writer:
        for i, (image, label) in enumerate(lmdb_samples(w.lmdb, 17)):
            buf = io.BytesIO()
            Image.open(io.BytesIO(image)).convert("RGB").save(buf, format="JPEG")
            writer.add(buf.getvalue()[:100] if i == 9 else buf.getvalue(), label)
    steps = [("prepare", "--lmdb", base / "lmdb", "--out", base / "shards", "--shard-size", 16),
             ("cache-teacher", "--shards", base / "shards", "--out", base / "store",
              *w.cache_args()),
             ("train", "--shards", base / "shards", "--teacher-store", base / "store", "--out",
              base / "run", *TRAIN_ARGS[:4], "--max-steps", 3, *TRAIN_ARGS[6:])]  # fmt: skip
    for args in steps:
        done = clip(*args, timeout=120)
        if done.returncode != 0:
            return False, f"{args[0]} rc {done.returncode}: {done.stderr.strip()[-150:]}"
    return True, "train finished its 3 steps"


def f_prepare_rerun_without_index(w: Work) -> tuple[bool, str]:
    out = w.path("no-index")
    shutil.copytree(w.big_ref, out)
    (out / "shards.json").unlink()
    rerun = clip("prepare", "--lmdb", w.big, "--out", out, "--shard-size", 100)
    same = rerun.returncode == 0 and samples_digest(out) == samples_digest(w.big_ref)
    return same, "same shards and index as before (no extra empty shard)" if same else "differs"


FAULTS = [
    ("kill -9 prepare mid-run, rerun", f_kill_prepare),
    ("kill -9 cache-teacher driver, rerun", f_kill_cache_driver),
    ("kill -9 a dask worker mid-shard", f_kill_dask_worker),
    ("kill -9 a decoding DataLoader worker", f_kill_loader_worker),
    ("kill -9 train after a checkpoint, resume", f_kill_train),
    ("two simultaneous cache-teacher runs", f_two_runs),
    ("stalled (SIGSTOP) writer + second run", f_stalled_writer),
    ("disk full in prepare", f_disk_full_prepare),
    ("disk full in cache-teacher", f_disk_full_cache),
    ("disk full in train", f_disk_full_train),
    ("undecodable sample listed missing, train", f_undecodable_sample),
    ("prepare rerun with shards.json lost", f_prepare_rerun_without_index),
]


# -- bad inputs ---------------------------------------------------------------------------------


def _truncated_lmdb(w: Work, name: str) -> Path:
    db = w.path(name) / "lmdb"
    shutil.copytree(w.lmdb, db)
    mdb = db / "data.mdb"
    with mdb.open("r+b") as f:
        f.truncate(mdb.stat().st_size // 3)
    return db


def _folder(w: Work, name: str, tsv: bytes) -> Path:
    folder = w.path(name) / "images"
    folder.mkdir(parents=True)
    for i, (image, _) in enumerate(lmdb_samples(w.lmdb, 3)):
        (folder / f"{i}.png").write_bytes(image)
    (folder / "labels.tsv").write_bytes(tsv)
    (folder.parent / "outside.png").write_bytes((folder / "0.png").read_bytes())
    return folder


def _config(w: Work, name: str, values: dict | str) -> Path:
    path = w.path(name).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(values if isinstance(values, str) else json.dumps(values))
    return path


def _train_config(w: Work, name: str, values: dict | str, match: str = "") -> tuple[bool, str]:
    """`train --config FILE` where FILE sets `values` (flags would override it, so only the
    data and the machine are given as flags; the rest is a tiny run if the file were taken)."""
    if isinstance(values, dict):
        values = {"preset": "test", "batch_size": 8, "max_steps": 2, **values}
    cfg = _config(w, name, values)
    args = ["train", "--shards", w.shards, "--teacher-store", w.store, "--out",
            cfg.with_suffix(".run"), "--config", cfg, *TRAIN_ARGS[-8:]]  # fmt: skip
    return clear_error(clip(*args), match)


def _store_copy(w: Work, name: str) -> Path:
    store = w.path(name)
    shutil.copytree(w.store, store)
    return store


def _run_copy(w: Work, name: str, keep: str = "step-00000016") -> Path:
    """The reference run as it stood when its `keep` checkpoint was the newest."""
    run = w.path(name)
    shutil.copytree(w.ref, run, ignore=lambda d, names: [
        n for n in names if n.startswith("step-") and n != keep or n == "student.safetensors"
    ])  # fmt: skip
    return run


def _other_shards(w: Work) -> Path:
    other = w.root / "data" / "other_shards"
    if not other.exists():
        clip("synth", "--out", w.root / "data" / "other_lmdb", "--num", 192, "--seed", 5)
        clip("prepare", "--lmdb", w.root / "data" / "other_lmdb", "--out", other,
             "--shard-size", 32)  # fmt: skip
    return other


def b_truncated_mdb_prepare(w):
    db = _truncated_lmdb(w, "trunc-mdb")
    return clear_error(clip("prepare", "--lmdb", db, "--out", db.parent / "shards"))


def b_truncated_mdb_eval(w):
    db = _truncated_lmdb(w, "trunc-mdb-eval")
    return clear_error(clip("eval", w.ref / "student.safetensors", "--data", db.parent))


def b_non_utf8_tsv(w):
    folder = _folder(w, "tsv-bytes", b"0.png\tabc\n1.png\t\xff\xfeab\n")
    return clear_error(clip("prepare", "--folder", folder, "--out", folder.parent / "s"))


def b_tsv_escape(w, target):
    folder = _folder(w, "tsv-escape", f"0.png\tabc\n{target}\tdef\n".encode())
    return clear_error(clip("prepare", "--folder", folder, "--out", folder.parent / "s"))


def b_non_utf8_lmdb_label(w):
    import lmdb

    db = w.path("lmdb-label") / "lmdb"
    db.parent.mkdir(parents=True)
    images = [image for image, _ in lmdb_samples(w.lmdb, 4)]
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, image in enumerate(images, 1):
            txn.put(b"image-%09d" % i, image)
            txn.put(b"label-%09d" % i, b"ab\xff" if i == 2 else b"word")
        txn.put(b"num-samples", b"4")
    env.close()
    done = clip("prepare", "--lmdb", db, "--out", db.parent / "s")
    index_path = db.parent / "s" / "shards.json"
    index = json.loads(index_path.read_text()) if done.returncode == 0 else {}
    skipped = index.get("skipped") or {}
    ok = done.returncode == 0 and index.get("num_samples") == 3 and sum(skipped.values()) == 1
    return ok, f"rc {done.returncode}; counted skip: {skipped}"


def b_prepare_other_size(w):
    out = w.path("other-size")
    shutil.copytree(w.big_ref, out)
    (out / "shards.json").unlink()
    for tar in sorted(out.glob("*.tar"))[-3:]:
        tar.unlink()
    return clear_error(clip("prepare", "--lmdb", w.big, "--out", out, "--shard-size", 64),
                       "shard-size")  # fmt: skip


def b_corrupt_chunk_verify(w):
    store = _store_copy(w, "corrupt-chunk")
    chunk = chunk_file(store)
    data = bytearray(chunk.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4] = bytes(b ^ 0xFF for b in data[mid : mid + 4])
    chunk.write_bytes(bytes(data))
    return verify_fails(clip("cache-teacher", "--verify", store, "--shards", w.shards))


def b_deleted_chunk_verify(w):
    store = _store_copy(w, "deleted-chunk")
    chunk_file(store).unlink()
    return verify_fails(clip("cache-teacher", "--verify", store, "--shards", w.shards))


def b_other_shards_verify(w):
    return verify_fails(clip("cache-teacher", "--verify", w.store, "--shards", _other_shards(w)))


def b_other_shards_train(w):
    other = _other_shards(w)
    args = ["train", "--shards", other, "--teacher-store", w.store,
            "--out", w.path("other-shards-train"), *TRAIN_ARGS]  # fmt: skip
    return clear_error(clip(*args))


def b_corrupt_chunk_train(w):
    store = _store_copy(w, "corrupt-train")
    chunk = chunk_file(store)
    chunk.write_bytes(chunk.read_bytes()[:40] + b"\0" * 64)
    return clear_error(clip(*w.train_args(w.path("corrupt-train-run"), store)), "shard-")


def _edited_dims(w):
    store = _store_copy(w, "edited-dims")
    manifest = json.loads((store / "manifest.json").read_text())
    key = next(iter(manifest["dims"]))
    manifest["dims"][key] += 1
    (store / "manifest.json").write_text(json.dumps(manifest))
    return store


def b_edited_dims_train(w):
    return clear_error(clip(*w.train_args(w.path("dims-run"), _edited_dims(w))))


def b_edited_dims_verify(w):
    return verify_fails(clip("cache-teacher", "--verify", _edited_dims(w), "--shards", w.shards))


def b_no_index_train(w):
    shards = w.path("no-index-train")
    shutil.copytree(w.shards, shards)
    (shards / "shards.json").unlink()
    args = ["train", "--shards", shards, "--teacher-store", w.store, "--out", shards / "run",
            *TRAIN_ARGS]  # fmt: skip
    return clear_error(clip(*args))


def b_truncated_state(w):
    run = _run_copy(w, "trunc-state")
    state = run / "checkpoints" / "step-00000016" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    return clear_error(clip(*w.train_args(run, None, "--resume")))


def b_truncated_config(w):
    run = _run_copy(w, "trunc-config")
    (run / "config.json").write_text((run / "config.json").read_text()[:50])
    return clear_error(clip(*w.train_args(run, None, "--resume")), "config.json")


def b_resume_other_workers(w):
    run = _run_copy(w, "resume-workers")
    args = w.train_args(run, None, "--resume")
    args[args.index("--workers") + 1] = 2
    return clear_error(clip(*args), "workers")


def b_resume_other_lr(w):
    return clear_error(clip(*w.train_args(_run_copy(w, "resume-lr"), None, "--resume",
                                          "--lr", 0.5)))  # fmt: skip


def b_resume_past_budget(w):
    args = w.train_args(_run_copy(w, "past-budget"), None, "--resume")
    args[args.index("--max-steps") + 1] = 8
    return clear_error(clip(*args), "step budget")


def b_resume_nothing(w):
    return clear_error(clip(*w.train_args(w.path("fresh"), None, "--resume")), "resume")


def b_other_run_in_out(w):
    run = _run_copy(w, "other-run")
    return clear_error(clip(*w.train_args(run, None, "--lr", 0.5)))


def b_worker_error_line(w):
    """A store error raised inside a DataLoader worker reads as its own line, not torch's
    "Caught InputError in DataLoader worker process 0" and the worker's traceback."""
    store = _store_copy(w, "worker-error")
    chunk = chunk_file(store)
    chunk.write_bytes(chunk.read_bytes()[:40] + b"\0" * 64)
    args = w.train_args(w.path("worker-error-run"), store)
    args[args.index("--workers") + 1] = 2
    done = clip(*args)
    ok, note = clear_error(done, "shard-")
    return ok and "Caught" not in done.stderr, note


BAD = [
    ("truncated data.mdb → prepare", b_truncated_mdb_prepare),
    ("truncated data.mdb → eval", b_truncated_mdb_eval),
    ("labels.tsv with non-UTF-8 bytes", b_non_utf8_tsv),
    ("labels.tsv path ../outside.png", lambda w: b_tsv_escape(w, "../outside.png")),
    ("labels.tsv path /etc/hostname", lambda w: b_tsv_escape(w, "/etc/hostname")),
    ("LMDB label with non-UTF-8 bytes (counted skip)", b_non_utf8_lmdb_label),
    ("prepare resumed with another --shard-size", b_prepare_other_size),
    ("--config max_steps \"2\"", lambda w: _train_config(w, "cfg-str", {"max_steps": "2"})),
    ("--config batch_size 0", lambda w: _train_config(w, "cfg-zero", {"batch_size": 0})),
    ("--config unknown preset", lambda w: _train_config(w, "cfg-preset", {"preset": "huge"})),
    ("--config keep_checkpoints -100",
     lambda w: _train_config(w, "cfg-keep", {"keep_checkpoints": -100})),
    ("--config not JSON", lambda w: _train_config(w, "cfg-garbage", "{max_steps: 2")),
    ("--config unknown key", lambda w: _train_config(w, "cfg-key", {"max_stepz": 2})),
    ("corrupted chunk + --verify", b_corrupt_chunk_verify),
    ("deleted chunk + --verify", b_deleted_chunk_verify),
    ("store of other shards + --verify --shards", b_other_shards_verify),
    ("manifest with edited dims + --verify", b_edited_dims_verify),
    ("store of other shards → train", b_other_shards_train),
    ("corrupted chunk → train (names the shard)", b_corrupt_chunk_train),
    ("manifest with edited dims → train", b_edited_dims_train),
    ("shards.json missing → train", b_no_index_train),
    ("input error with --workers 2 (no 'Caught')", b_worker_error_line),
    ("truncated state.pt, no older checkpoint", b_truncated_state),
    ("truncated config.json + --resume", b_truncated_config),
    ("--resume with another --workers", b_resume_other_workers),
    ("--resume with another --lr", b_resume_other_lr),
    ("--resume with a smaller --max-steps", b_resume_past_budget),
    ("--resume where no run is", b_resume_nothing),
    ("train into another run's folder", b_other_run_in_out),
    ("prepare --charset 99", lambda w: clear_error(clip("prepare", "--lmdb", w.lmdb, "--out",
                                                        w.path("cs"), "--charset", 99))),
    ("prepare from a missing folder", lambda w: clear_error(clip("prepare", "--lmdb",
                                                                 w.path("nothing"), "--out",
                                                                 w.path("o")))),
    ("synth --out an existing LMDB", lambda w: clear_error(clip("synth", "--out", w.lmdb,
                                                                "--num", 2))),
    ("cache-teacher --clip-pretrained missing",
     lambda w: clear_error(clip("cache-teacher", "--shards", w.shards, "--out", w.path("s"),
                                "--clip-model", TEACHER / "teacher.json", "--clip-pretrained",
                                w.path("missing.safetensors")))),
    ("cache-teacher --codec bogus",
     lambda w: clear_error(clip("cache-teacher", "--shards", w.shards, "--out", w.path("s"),
                                *TEACHER_ARGS, "--codec", "bogus"))),
    ("cache-teacher --verify a non-store",
     lambda w: refused(clip("cache-teacher", "--verify", w.shards))),
    ("train --shards missing", lambda w: clear_error(clip("train", "--shards", w.path("none"),
                                                          "--teacher-store", w.store, "--out",
                                                          w.path("r"), *TRAIN_ARGS))),
    ("eval a missing checkpoint",
     lambda w: clear_error(clip("eval", w.path("none.safetensors"), "--data", w.lmdb))),
]  # fmt: skip


# -- main ----------------------------------------------------------------------------------------


def run_case(w: Work, name: str, kind: str, fn: Callable) -> Result:
    tic = time.perf_counter()
    try:
        ok, note = fn(w)
    except Exception as err:  # a broken case is reported as failed, the suite goes on
        ok, note = False, f"case error: {type(err).__name__}: {err}"
    result = Result(name, kind, ok, note, round(time.perf_counter() - tic, 1))
    mark = {True: "ok  ", False: "FAIL", None: "skip"}[ok]
    print(f"{mark}  {kind:9s}  {name:48s} {result.seconds:6.1f}s  {note}", flush=True)
    return result


def totals(results: list[Result]) -> dict:
    def count(kind):
        tried = [r for r in results if r.kind == kind and r.ok is not None]
        return len(tried), sum(bool(r.ok) for r in tried)

    (fi, fs), (bi, bh) = count("fault"), count("bad input")
    skipped = [r.name for r in results if r.ok is None]
    return {"faults_injected": fi, "faults_survived": fs, "bad_inputs_tried": bi,
            "bad_inputs_handled": bh, "skipped": skipped}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results and totals here")
    parser.add_argument("--work", type=Path, help="work folder (kept); default: a temporary one")
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    args = parser.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="clipocr-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    w = Work(root)
    results: list[Result] = []
    tic = time.perf_counter()
    try:
        w.build()
        print(f"setup {time.perf_counter() - tic:.0f} s in {root}; tmpfs: {w.tmpfs}", flush=True)
        cases = [(n, "fault", f) for n, f in FAULTS] + [(n, "bad input", f) for n, f in BAD]
        for name, kind, fn in cases:
            if args.only in name:
                results.append(run_case(w, name, kind, fn))
    finally:
        kill_all()
        w.unmount()
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    summary = totals(results)
    summary["seconds"] = round(time.perf_counter() - tic)
    print(f"\nfaults injected {summary['faults_injected']}, survived with nothing lost "
          f"{summary['faults_survived']}; bad inputs tried {summary['bad_inputs_tried']}, handled "
          f"{summary['bad_inputs_handled']}; skipped {len(summary['skipped'])}; "
          f"{summary['seconds']} s")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"totals": summary, "cases": [asdict(r) for r in results]}, indent=2)
        )


if __name__ == "__main__":
    main()
