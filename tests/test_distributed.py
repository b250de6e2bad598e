"""The distributed training path end to end, as real processes on loopback: `torchrun` DDP
training on CPU (gloo) with an exact `--resume`.

It spawns several Python processes (a few seconds each to import torch), so it is among the
slowest tests; every process is bounded by a timeout and killed on expiry. (`cache-teacher
--scheduler` against a separately started dask cluster that loses a worker mid-run is a case of
`bench/faults.py` now; `tests/test_cluster.py` runs the `--scheduler` path in-process.)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import WORDS, fake_store, make_shards
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

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
