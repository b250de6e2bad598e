"""The distributed paths end to end, as real processes on loopback: `torchrun` DDP training on
CPU (gloo) with an exact `--resume`, and `cache-teacher --scheduler` against a separately started
dask cluster that loses a worker (SIGKILL) mid-run.

Both spawn several Python processes (a few seconds each to import torch), so they are the
slowest tests here; every process is bounded by a timeout and killed in a `finally`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import WORDS, fake_store, make_shards
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TEACHER_DIR = REPO / "clipocr" / "assets" / "teacher"

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)


def free_port() -> int:
    """A loopback port nobody listens on now (bind to port 0; the OS picks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if Path("/sys/class/net/lo").exists():  # gloo would otherwise resolve the host name
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _run(args: list[object], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run to the end within `timeout`; on expiry the process group is killed and the test fails."""
    proc = subprocess.Popen(
        [str(a) for a in args], cwd=REPO, env=_env(), text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{args[:6]} did not finish in {timeout:.0f} s (hang?)\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- torchrun DDP training ---------------------------------------------------------------------


def _torchrun_train(shards: Path, store: Path, out: Path, *more: object) -> None:
    args = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", 1, "--nproc_per_node", 2,
        "--master_addr", "127.0.0.1", "--master_port", free_port(),
        "-m", "clipocr", "train", "--shards", shards, "--teacher-store", store, "--out", out,
        "--preset", "test", "--batch-size", 4, "--max-steps", 4, "--ckpt-every", 2,
        "--threads", 1, "--workers", 0, "--device", "cpu", *more,
    ]  # fmt: skip
    done = _run(args, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


@needs_gloo
def test_ddp_training_resumes_bit_identically(tmp_path: Path) -> None:
    """Two gloo ranks train 4 steps; a twin that stopped after its step-2 checkpoint and is
    resumed under DDP ends with the very same exported student, bit for bit."""
    shards = make_shards(tmp_path, [f"{w}{i}" for i in range(3) for w in WORDS], shard_size=8)
    store = fake_store(shards, tmp_path / "store")
    full = tmp_path / "full"
    _torchrun_train(shards, store, full)
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000004",
    ]

    # The interrupted twin: everything the full run had written when its step-2 checkpoint was
    # finished (the step-4 checkpoint and the export never happened).
    cut = tmp_path / "cut"
    shutil.copytree(
        full, cut, ignore=shutil.ignore_patterns("step-00000004", "student.safetensors")
    )
    _torchrun_train(shards, store, cut, "--resume")

    a, b = load_file(full / "student.safetensors"), load_file(cut / "student.safetensors")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed DDP run differs in {differ[:5]}"
    steps = [line for line in (cut / "history.jsonl").read_text().splitlines() if line]
    assert len(steps) == len((full / "history.jsonl").read_text().split())


# -- cache-teacher against an external dask cluster -----------------------------------------------


def _spawn(args: list[object], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(a) for a in args], cwd=REPO, env=_env(), start_new_session=True,
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _wait_for_workers(address: str, n: int, timeout: float) -> None:
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        client.wait_for_workers(n, timeout=timeout)


def _writing_worker(store: Path, worker_pids: set[int]) -> int | None:
    """The pid of a worker that has an unpublished group open in `store` right now."""
    from clipocr.pipeline.teacher_store.location import Location
    from clipocr.pipeline.teacher_store.ownership import read_owner

    loc = Location(store)
    for tmp in store.glob(".tmp-*"):
        owner = read_owner(loc, tmp.name)
        if owner is not None and owner.pid in worker_pids:
            return owner.pid
    return None


def test_cache_teacher_on_an_external_cluster_survives_a_killed_worker(tmp_path: Path) -> None:
    """A `dask scheduler` + two `dask worker --no-nanny` on 127.0.0.1; one worker is SIGKILLed
    while it writes a shard group; the run still caches every shard (the scheduler moves the
    task to the other worker, whose writer removes the dead one's temporary group) and
    `--verify --shards` passes."""
    pytest.importorskip("distributed")
    shards = make_shards(tmp_path, [f"{w}{i}" for i in range(6) for w in WORDS], shard_size=16)
    store = tmp_path / "store"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask_cli = [sys.executable, "-m", "dask"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_spawn([*dask_cli, "scheduler", "--host", "127.0.0.1", "--port", port,
                             "--no-dashboard"], tmp_path / "scheduler.log"))  # fmt: skip
        for i in range(2):
            procs.append(_spawn([*dask_cli, "worker", address, "--no-nanny", "--nthreads", 1,
                                 "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"],
                                tmp_path / f"worker{i}.log"))  # fmt: skip
        _wait_for_workers(address, 2, timeout=60)
        workers = {p.pid for p in procs[1:]}
        driver = _spawn([sys.executable, "-m", "clipocr", "cache-teacher", "--shards", shards,
                         "--out", store, "--clip-model", TEACHER_DIR / "teacher.json",
                         "--clip-pretrained", TEACHER_DIR / "teacher.safetensors",
                         "--scheduler", address, "--device", "cpu", "--workers", 0,
                         "--batch-size", 2], tmp_path / "driver.log")  # fmt: skip
        procs.append(driver)
        deadline = time.monotonic() + 90
        victim = None
        while victim is None and driver.poll() is None and time.monotonic() < deadline:
            victim = _writing_worker(store, workers)
            time.sleep(0.02)
        assert victim is not None, "no worker was seen writing a group before the run ended"
        os.kill(victim, signal.SIGKILL)
        # Reap it, as a shell or a nanny would: an unreaped (zombie) pid still looks alive.
        next(p for p in procs if p.pid == victim).wait(timeout=10)
        try:
            driver.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail("cache-teacher did not finish after losing a worker (hang?)")
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, log[-4000:]
        assert "cached 96 samples from 6 shard(s)" in log, log[-2000:]
        verify = _run([sys.executable, "-m", "clipocr", "cache-teacher", "--verify", store,
                       "--shards", shards], timeout=60)  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert not list(store.glob(".tmp-*")), "a temporary group was left behind"
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
