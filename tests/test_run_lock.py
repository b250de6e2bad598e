"""A run folder has one owner: a second run (another process) is refused naming the holder's pid,
or waits for it; the lock of a killed holder is taken over. Issue 23: two `train` runs into one
``--out`` both exited 0 and the first run's work was silently lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import WORDS, make_shards, run_console

from clipocr.commands.app import main
from clipocr.pipeline.errors import InputError
from clipocr.train_student.run_lock import LOCK_NAME, RunLock

HOLD = """
import sys, time
from clipocr.train_student.run_lock import RunLock
lock = RunLock(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def hold(run_dir: Path, seconds: float) -> subprocess.Popen:
    """Another process that takes the folder's lock and keeps it `seconds` (own process group,
    so a signal reaches it and nothing else)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = hold(run_dir, 60)
    try:
        with pytest.raises(InputError) as err:
            RunLock(run_dir)
        message = str(err.value)
        assert message.startswith(f"{run_dir}: another train run (pid {holder.pid})")
        assert "--wait" in message and "\n" not in message
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    # Killed: its lock file (and pid) is still there, but the kernel dropped the lock.
    assert (run_dir / LOCK_NAME).read_text().strip() == str(holder.pid)
    with RunLock(run_dir) as lock:
        assert (run_dir / LOCK_NAME).read_text().strip() == str(os.getpid())
        assert lock.path.exists()
    assert not (run_dir / LOCK_NAME).exists()


def test_wait_takes_the_folder_when_the_holder_ends(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = hold(run_dir, 1.5)
    tic = time.monotonic()
    with RunLock(run_dir, wait=True, poll_s=0.05):
        waited = time.monotonic() - tic
        assert (run_dir / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert waited > 0.5
    holder.wait()


def test_one_process_shares_its_lock_and_cleans_up(tmp_path: Path) -> None:
    """A second `RunLock` in the holding process shares the lock (code that opens a second
    `Trainer` on a folder, as resume tests do); the last release removes the lock file, and the
    folder too when the lock made it and nothing else was written."""
    run_dir = tmp_path / "a" / "run"
    first = RunLock(run_dir)
    second = RunLock(run_dir)
    first.release()
    first.release()  # idempotent: does not release the second's share
    assert (run_dir / LOCK_NAME).exists()
    second.release()
    assert not run_dir.exists()
    kept = tmp_path / "kept"
    with RunLock(kept):
        (kept / "config.json").write_text("{}")
    assert sorted(p.name for p in kept.iterdir()) == ["config.json"]


def test_a_second_train_into_a_folder_in_use_is_one_line(tmp_path: Path, capsys, monkeypatch):
    """Issue 23's case with two real `train` processes and different settings: the second
    (seed 1) exits 2 with one line naming the first's pid while the first (seed 0) trains, and
    the folder stays the first run's; with --wait, a run starts once the holder is gone."""
    shards = make_shards(tmp_path, WORDS)
    run_dir = tmp_path / "run"
    args = ["train", "--shards", shards, "--no-distill", "--out", run_dir, "--preset", "test",
            "--batch-size", 8, "--workers", 0, "--threads", 1]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "clipocr", *map(str, [*args, "--max-steps", 10**6, "--seed", 0])],
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "config.json").exists():  # written under the lock: it trains
            assert first.poll() is None and time.monotonic() < deadline, "first run did not start"
            time.sleep(0.1)
        second = [*args, "--max-steps", 1, "--seed", 1]
        code, out, err = run_console(main, "clipocr", capsys, monkeypatch, *second)
        assert code == 2, err
        assert err.strip().splitlines()[-1] == (
            f"error: {run_dir}: another train run (pid {first.pid}) is using this folder; "
            "wait for it (--wait), or train into another --out"
        )
        assert '"seed": 0' in (run_dir / "config.json").read_text()
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The first run was killed before a checkpoint: a plain run may start over in the folder,
    # once a (third) holder is gone.
    holder = hold(run_dir, 1.0)
    code, out, err = run_console(main, "clipocr", capsys, monkeypatch, *second, "--wait")
    holder.wait()
    assert code == 0, err
    assert "student exported" in out and not (run_dir / LOCK_NAME).exists()
