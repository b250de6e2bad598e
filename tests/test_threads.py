"""CPU thread settings: they follow the usable core count, the workers, and the user's choice."""

from __future__ import annotations

import logging
import os

import pytest

from clipocr.pipeline import threads
from clipocr.pipeline.threads import cpu_threads, default_workers


@pytest.fixture
def cores(monkeypatch: pytest.MonkeyPatch):
    """Pretend this process may run on `n` cores, with no OMP_NUM_THREADS in the environment."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_cores(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    return set_cores


@pytest.mark.parametrize(
    ("n", "workers", "intra_op"),
    [(2, 1, 1), (2, 0, 2), (2, 2, 1), (1, 3, 1), (8, 2, 6), (16, 0, 16)],
)
def test_automatic_leaves_a_core_per_worker(cores, n: int, workers: int, intra_op: int) -> None:
    cores(n)
    plan = cpu_threads(workers)
    assert (plan.cores, plan.intra_op, plan.workers, plan.reason) == (
        n, intra_op, workers, "automatic",
    )  # fmt: skip


def test_workers_follow_the_cores_when_not_given(cores) -> None:
    assert [default_workers(n) for n in (1, 2, 3, 6, 16)] == [0, 1, 1, 2, 5]
    cores(6)
    plan = cpu_threads()
    assert (plan.workers, plan.intra_op) == (2, 4)


def test_ddp_ranks_share_the_host(cores) -> None:
    cores(8)
    assert cpu_threads(1, processes=2).intra_op == 3  # 4 cores each, one for the worker
    assert cpu_threads(0, processes=16).intra_op == 1


def test_user_override_wins(cores, monkeypatch: pytest.MonkeyPatch) -> None:
    cores(2)
    plan = cpu_threads(1, threads=4)
    assert (plan.intra_op, plan.reason) == (4, "--threads")
    assert "more than the cores" in plan.describe()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert (cpu_threads(1).intra_op, cpu_threads(1).reason) == (3, "OMP_NUM_THREADS")
    assert cpu_threads(1, threads=2).intra_op == 2  # the explicit setting beats the environment
    with pytest.raises(ValueError, match="threads"):
        cpu_threads(1, threads=0)
    with pytest.raises(ValueError, match="workers"):
        cpu_threads(-1)


def test_without_affinity_counts_all_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert threads.usable_cores() == 5


def test_the_choice_is_logged(cores, caplog: pytest.LogCaptureFixture) -> None:
    cores(4)
    with caplog.at_level(logging.INFO, logger="clipocr.pipeline.threads"):
        cpu_threads(1)
    assert "4 usable core(s): 3 intra-op thread(s), 1 DataLoader worker(s) (automatic)" in (
        caplog.text
    )


def test_a_container_quota_caps_the_usable_cores(tmp_path) -> None:
    """cgroup v2 `cpu.max` "200000 100000" = 2 cores, whatever the affinity mask says; v1 too;
    no quota ("max") leaves the mask."""
    from clipocr.pipeline.threads import _cgroup_quota

    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert _cgroup_quota(str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(str(v1)) == 3
    assert _cgroup_quota(str(tmp_path / "absent")) is None
