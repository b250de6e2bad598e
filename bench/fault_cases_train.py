"""The fault cases of `train` (kill -9, a killed DataLoader worker, two runs in one folder, a
full disk): each must be survived with nothing lost, bit for bit. Run by `faults.py`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from fault_kit import (
    TRAIN_ARGS,
    Work,
    children,
    clear_error,
    clip,
    lmdb_samples,
    poll_until,
    same_student,
    spawn,
    wait,
)


def _history_steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "history.jsonl").read_text().splitlines()]


def _ended(proc: subprocess.Popen, log: Path, timeout: float) -> subprocess.CompletedProcess:
    """`proc` (spawned with `log`) once it ended, its log as the stderr `clear_error` reads."""
    rc = wait(proc, timeout)
    return subprocess.CompletedProcess(proc.args, rc, "", log.read_text())


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


def f_disk_full_train(w: Work) -> tuple[bool | None, str]:
    out = w.tmpfs_path("run")
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


def f_kill_train_loader_worker(w: Work) -> tuple[bool, str]:
    """torch raises "DataLoader worker (pid N) is killed by signal" from its SIGCHLD handler,
    at any point of a step: the run must stop with one line, and --resume must go on exactly."""
    ref = w.reference(workers=2)
    out = w.path("kill-train-loader")
    args = w.train_args(out)
    args[args.index("--workers") + 1] = 2
    proc = spawn(args, log=out.with_suffix(".log"))

    def loader_workers() -> list[int]:
        done = (out / "checkpoints" / "step-00000008").is_dir()
        return children(proc.pid) if done else []

    kids = poll_until(loader_workers, proc)
    if not kids:
        wait(proc, 120)
        return False, "not injected: no DataLoader worker seen after the first checkpoint"
    os.kill(kids[0], signal.SIGKILL)
    ended = _ended(proc, out.with_suffix(".log"), 120)
    stopped, line = clear_error(ended, "DataLoader worker")
    resumed = clip(*args, "--resume")
    if resumed.returncode != 0:
        return False, f"{line}; resume rc {resumed.returncode}: {resumed.stderr[-150:]}"
    same = same_student(out / "student.safetensors", ref / "student.safetensors")
    unique = len(set(_history_steps(out))) == len(_history_steps(out))
    ok = (stopped or ended.returncode == 0) and same and unique
    return ok, f"{line}; resumed bit-identical to an uninterrupted --workers 2 run: {same}"


def f_kill_train_before_checkpoint(w: Work) -> tuple[bool, str]:
    """Killed before its first checkpoint, the folder holds a config.json and a history but
    nothing to resume: --resume says so in one line, and a plain rerun starts over."""
    out = w.path("kill-train-early")
    proc = spawn(w.train_args(out))
    hit = poll_until(lambda: (out / "history.jsonl").exists(), proc)
    if not hit or (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
        wait(proc, 120)
        return False, "not injected: a checkpoint was written before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resume_line = clear_error(clip(*w.train_args(out, None, "--resume")), "resume")
    rerun = clip(*w.train_args(out))
    if rerun.returncode != 0:
        return False, f"rerun rc {rerun.returncode}: {rerun.stderr.strip()[-150:]}"
    same = same_student(out / "student.safetensors", w.ref / "student.safetensors")
    ok = resume_line[0] and same and _history_steps(out) == _history_steps(w.ref)
    return ok, f"--resume: {resume_line[1]}; rerun bit-identical: {same}"


def f_two_trains(w: Work) -> tuple[bool, str]:
    """Two identical `train` runs into one folder at once: one may be refused, but none may
    end in a traceback, and the folder must end up holding the uninterrupted run's student."""
    out = w.path("two-trains")
    logs = [out.with_name(f"{out.name}-{i}.log") for i in range(2)]
    procs = [spawn(w.train_args(out), log=log) for log in logs]
    ended = [_ended(p, log, 300) for p, log in zip(procs, logs)]
    rcs, errs = [e.returncode for e in ended], [e.stderr for e in ended]
    tracebacks = sum("Traceback" in e for e in errs)
    if 0 not in rcs:
        return False, f"exit codes {rcs}, neither finished; tracebacks: {tracebacks}"
    lines = [e.strip().splitlines()[-1][:120] for e, rc in zip(errs, rcs) if rc != 0]
    same = same_student(out / "student.safetensors", w.ref / "student.safetensors")
    ok = same and tracebacks == 0 and all(rc in (0, 1, 2) for rc in rcs)
    return ok, f"exit codes {rcs} {lines}; student bit-identical: {same}"


def f_sigstop_train(w: Work) -> tuple[bool, str]:
    """Stopped (SIGSTOP, as a scheduler or a laptop lid does) for a while mid-run and continued:
    the run must finish as if nothing happened."""
    out = w.path("sigstop-train")
    args = w.train_args(out)
    args[args.index("--workers") + 1] = 2
    proc = spawn(args, log=out.with_suffix(".log"))
    if not poll_until(lambda: (out / "checkpoints" / "step-00000008").is_dir(), proc):
        wait(proc, 120)
        return False, "not injected: train ended before the stop"
    os.killpg(proc.pid, signal.SIGSTOP)
    time.sleep(10)
    os.killpg(proc.pid, signal.SIGCONT)
    rc = wait(proc, 300)
    same = rc == 0 and same_student(
        out / "student.safetensors", w.reference(workers=2) / "student.safetensors"
    )
    return same, f"rc {rc} after 10 s stopped; bit-identical: {same}"


TRAIN_FAULTS = [
    ("kill -9 train after a checkpoint, resume", f_kill_train),
    ("kill -9 train before its first checkpoint", f_kill_train_before_checkpoint),
    ("kill -9 a train DataLoader worker, resume", f_kill_train_loader_worker),
    ("SIGSTOP / SIGCONT train (with workers)", f_sigstop_train),
    ("two simultaneous train runs, one folder", f_two_trains),
    ("disk full in train", f_disk_full_train),
    ("undecodable sample listed missing, train", f_undecodable_sample),
]
