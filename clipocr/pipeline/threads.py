"""CPU thread settings for a job: torch intra-op threads and DataLoader workers, chosen together.

Torch starts as many intra-op threads as the machine has cores, whatever else runs. A CPU job
whose DataLoader workers decode and augment on the same cores then oversubscribes them: the
math threads and the workers take turns, and each turn flushes the other's caches. Measured with
the demo's training on 2 cores and one worker: 128 samples/s with torch's default threads, 161
with one intra-op thread on a quiet machine, and ×8 under load from other jobs (issue 13). So the
rule here is one core per worker and the rest for the math, never fewer than one thread.

Usable cores are the ones this process may run on (`os.sched_getaffinity`, which honours
`taskset` and container CPU sets), not the machine's total. DataLoader workers set themselves to
one thread each (torch does that), so they need no setting here. On a GPU, torch's default is
left alone: its CPU threads only feed the device.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadPlan:
    """The chosen settings and why (``reason``: ``automatic``, ``--threads`` or
    ``OMP_NUM_THREADS``)."""

    cores: int
    intra_op: int
    workers: int
    reason: str

    def describe(self) -> str:
        over = self.intra_op + self.workers > self.cores
        return (
            f"{self.cores} usable core(s): {self.intra_op} intra-op thread(s), "
            f"{self.workers} DataLoader worker(s) ({self.reason}"
            + (", more than the cores: they will take turns)" if over else ")")
        )


def _cgroup_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """Whole cores a container's CPU quota allows (cgroup v2 `cpu.max`, v1 `cpu.cfs_*`), or None
    when there is no quota. A `--cpus 2` container on a large host sees every host core in its
    affinity mask; sizing threads by that mask oversubscribes its two cores many times over."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask where the OS has one, capped by a
    container's CPU quota."""
    if hasattr(os, "sched_getaffinity"):
        cores = max(len(os.sched_getaffinity(0)), 1)
    else:
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return cores if quota is None else min(cores, quota)


def default_workers(cores: int) -> int:
    """Workers for a job that leaves the choice to us: none on one core (a worker would only take
    turns with the math), else one per three cores. Measured here: one worker supplies ≈ 390
    samples/s of decoded, augmented, store-joined batches, one core trains the demo student at
    ≈ 160 samples/s, so a worker keeps about two math threads fed."""
    return 0 if cores <= 1 else max(1, cores // 3)


def cpu_threads(
    workers: int | None = None, threads: int | None = None, processes: int = 1
) -> ThreadPlan:
    """Choose (and log) intra-op threads and DataLoader workers for a CPU job; the caller applies
    them (`torch.set_num_threads(plan.intra_op)`, its DataLoader's ``num_workers``).

    `workers`: the job's DataLoader workers (None: `default_workers`). `threads`: the user's
    intra-op thread count (None: automatic, unless ``OMP_NUM_THREADS`` is set, which counts as
    the user's choice too). Automatic = the usable cores minus one per worker, at least one.
    `processes`: how many such processes share the machine (DDP ranks on one host); each plans
    for its share of the cores.
    """
    cores = max(usable_cores() // max(processes, 1), 1)
    workers = default_workers(cores) if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    env = os.environ.get("OMP_NUM_THREADS", "")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        plan = ThreadPlan(cores, threads, workers, "--threads")
    elif env.isdigit() and int(env) >= 1:
        plan = ThreadPlan(cores, int(env), workers, "OMP_NUM_THREADS")
    else:
        plan = ThreadPlan(cores, max(cores - workers, 1), workers, "automatic")
    log.info("threads: %s", plan.describe())
    return plan
