"""`bench/gpu_check.sh --quick` on the CPU writes every JSON file with its figures, so the GPU
run works the first time a machine is lent; and a step that overruns is killed, group and all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import WORDS, text_image, write_lmdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402

# The tests share one quick run (its module fixture): keep them on one xdist worker.
pytestmark = pytest.mark.xdist_group("gpu_check")

EXPECTED = {
    "cache.json": ["machine", "setup", "forward_only", "end_to_end", "ratio", "tar_read",
                   "decode", "writer_only", "kb_per_sample", "mjst_hours"],
    "cache_null.json": ["machine", "setup", "dims", "runs", "scaling", "cores_for_node_rate"],
    "train.json": ["setup", "machine", "steps", "loader", "demand_samples_per_s",
                   "cached_over_plain", "online_over_plain"],
    "inference.json": ["model", "batch_size", "precision", "decoding"],
    "gpu_check.json": ["profile", "gpu", "steps", "data_seconds"],
}  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("gpu_check")
    seed = write_lmdb(root / "seed", [(text_image(w, "JPEG"), w) for w in WORDS * 4])
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(root / "out"), "--quick",
         "--seed", str(seed)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    return root / "out", proc


def test_quick_run_writes_every_figure(quick_run) -> None:
    out, proc = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, keys in EXPECTED.items():
        data = json.loads((out / name).read_text())
        assert not [k for k in keys if k not in data], (name, data)
    assert (out / "gpu_check.log").stat().st_size > 0
    summary = json.loads((out / "gpu_check.json").read_text())
    assert {s: r["rc"] for s, r in summary["steps"].items()} == dict.fromkeys(gpu_check.STEPS, 0)


def test_quick_run_figures_are_numbers(quick_run) -> None:
    out, _ = quick_run
    cache = json.loads((out / "cache.json").read_text())
    assert cache["end_to_end"] > 0 and cache["forward_only"] > 0
    null = json.loads((out / "cache_null.json").read_text())
    assert [r["processes"] for r in null["runs"]] == [1, 2]
    assert all(r["samples"] == 128 and r["cpu_ms_per_sample"] > 0 for r in null["runs"])
    assert set(null["scaling"]) == {"1", "2"}
    train = json.loads((out / "train.json").read_text())
    assert set(train["steps"]) == {"plain", "cached", "online"}
    assert {(r["workers"], r["store"]) for r in train["loader"]} == {(0, True), (0, False)}
    inference = json.loads((out / "inference.json").read_text())
    assert set(inference["decoding"]) == {"1_step", "max_steps", "typical_word"}
    assert all(v["ms_per_image_b1"] > 0 for v in inference["decoding"].values())


def test_a_step_past_its_limit_is_killed_with_its_children(tmp_path) -> None:
    pid_file = tmp_path / "child.pid"
    cmd = ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    tic = time.monotonic()
    rc, seconds, _ = gpu_check.run_step(cmd, tmp_path / "log", 1, dict(os.environ))
    assert rc is None and seconds < 30 and time.monotonic() - tic < 30
    child = int(pid_file.read_text())
    time.sleep(0.2)
    # gone, or a zombie waiting for a reaper (containers may have none): no longer running
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert "[rc None" in (tmp_path / "log").read_text()


def test_without_seed_words_it_says_how_to_make_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", str(tmp_path), "--seed", str(tmp_path)])
    with pytest.raises(SystemExit, match="--prepare"):
        gpu_check.main()
