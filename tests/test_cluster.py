"""`cache-teacher`'s dask cluster as a user meets it (issue 23): Ctrl-C is one line saying what
was kept, a finished run stops its worker processes without warnings, and a scheduler that
cannot be reached leaves no store behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import psutil
import pytest
from conftest import WORDS, make_shards

from clipocr.cache_teacher.orchestrate import CacheJob, run_cache
from clipocr.cache_teacher.runner import RunnerConfig
from clipocr.cache_teacher.teacher import TeacherConfig

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "clipocr" / "assets" / "teacher"
NOISE = ("Traceback", "WARNING", "Warning", "leaked", "CommClosedError", "KeyboardInterrupt")


def _job(shards: Path, out: Path) -> CacheJob:
    teacher = TeacherConfig(
        model=str(TEACHER / "teacher.json"), pretrained=str(TEACHER / "teacher.safetensors")
    )
    return CacheJob(str(shards), str(out), teacher, RunnerConfig(4, 0), device="cpu", threads=1)


def test_ctrl_c_of_cache_teacher_is_one_line_saying_what_was_kept(tmp_path: Path) -> None:
    """SIGINT to the process group, as a terminal's Ctrl-C sends it to the driver, its worker
    process and their children alike (the test's own session: a non-interactive shell would
    start a background job with SIGINT ignored, and prove nothing)."""
    shards = make_shards(tmp_path, [f"{w}{i}" for i in range(3) for w in WORDS], shard_size=2)
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipocr", "cache-teacher", "--shards", str(shards), "--out",
         str(store), "--clip-model", str(TEACHER / "teacher.json"), "--clip-pretrained",
         str(TEACHER / "teacher.safetensors"), "--device", "cpu", "--workers", "0",
         "--batch-size", "2", "--threads", "1"],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # SIGINT's default back, should this suite run with it ignored (a background job)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not list(store.glob("shard-*")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no shard group was published (hang?)"
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    done = len(list(store.glob("shard-*")))
    assert errors[0] == (
        f"error: {store}: interrupted; {done} of 24 shard(s) are cached and kept: rerun the "
        "same command to resume"
    )
    assert not [line for line in lines if any(word in line for word in NOISE)], err[-3000:]
    assert not out


def test_a_finished_run_stops_its_worker_processes_without_warnings(tmp_path, caplog) -> None:
    """Before, the local cluster outlived `run_cache` and was closed at interpreter exit, where
    the nanny gave its worker 4 s and then killed it: "Worker process still alive after 4.0
    seconds, killing". Now it is closed before `run_cache` returns, its workers given time."""
    shards = make_shards(tmp_path, WORDS[:4], shard_size=2)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with caplog.at_level(logging.WARNING):
        summary = run_cache(_job(shards, tmp_path / "store"), dask_workers=1, progress=False)
    assert summary.samples == 4 and not summary.failed
    left = [
        " ".join(p.cmdline())
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    # multiprocessing's resource tracker lives as long as this process, by design
    assert not [cmd for cmd in left if "resource_tracker" not in cmd], left
    assert not [r for r in caplog.records if r.name.startswith("distributed")], caplog.text


def test_an_unreachable_scheduler_leaves_no_store(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, WORDS[:2], shard_size=2)
    out = tmp_path / "store"
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(OSError, match="tcp://127.0.0.1:1"),
    ):
        run_cache(_job(shards, out), scheduler="tcp://127.0.0.1:1", progress=False)
    assert not out.exists()


def test_a_running_scheduler_is_used_and_left_running(tmp_path: Path) -> None:
    """`--scheduler ADDRESS`: the shards go to that cluster's workers (here an in-process one),
    and the cluster is not ours to stop. (A separately started cluster losing a worker mid-run
    is `bench/faults.py`'s "kill -9 a worker of an external dask cluster".)"""
    from distributed import Client, LocalCluster

    shards = make_shards(tmp_path, WORDS[:4], shard_size=2)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:  # fmt: skip
        summary = run_cache(
            _job(shards, tmp_path / "store"), scheduler=cluster.scheduler_address, progress=False
        )
        assert summary.samples == 4 and len(summary.done) == 2
        with Client(cluster.scheduler_address) as client:
            assert len(client.scheduler_info()["workers"]) == 1
