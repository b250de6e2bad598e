"""The fault cases issue 23's probe added: two `train` runs of different settings into one
folder, Ctrl-C and SIGTERM of `cache-teacher` (one line, nothing lost, no dask noise), and a
worker of an external dask cluster killed mid-shard (moved here from the test suite). Each must
be survived with nothing lost. Run by `faults.py`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from fault_cases_train import _ended
from fault_kit import (
    ENV,
    REPO,
    SLOW,
    SPAWNED,
    TEACHER_ARGS,
    Work,
    clear_error,
    clip,
    group_dirs,
    poll_until,
    same_student,
    spawn,
    verify_ok,
    wait,
    writer_pid,
)

# What a clean stop or a clean finish of cache-teacher must not print (issue 23: dask's
# tracebacks, broken connections, leaked semaphores, the nanny's "still alive ... killing").
NOISE = ("Traceback", "WARNING", "leaked", "CommClosedError", "KeyboardInterrupt", "killing")


def _noise(text: str) -> list[str]:
    return [line[:100] for line in text.splitlines() if any(word in line for word in NOISE)]


def f_two_trains_other_settings(w: Work) -> tuple[bool, str]:
    """Seeds 0 and 1 into one folder, the second started as soon as the first has made it: the
    second is refused in one line (naming the holder's pid, or the run it found there), the
    first ends as an uninterrupted run would (before: both exited 0 and the folder held the
    second run, the first run's work gone)."""
    out = w.path("two-trains-other-settings")
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = [out.with_name(f"{out.name}-{i}.log") for i in range(2)]
    first = spawn(w.train_args(out), log=logs[0])
    poll_until(lambda: out.exists(), first)  # the first run has begun: it holds the folder
    second_args = w.train_args(out)
    second_args[second_args.index("--seed") + 1] = 1
    second = spawn(second_args, log=logs[1])
    ended = [_ended(p, log, 300) for p, log in zip((first, second), logs)]
    rcs = [e.returncode for e in ended]
    refused, line = clear_error(ended[1])  # by the lock (naming its pid) or the config.json
    refused = refused and ("pid" in line or "already holds a run" in line)
    same = rcs[0] == 0 and same_student(out / "student.safetensors", w.ref / "student.safetensors")
    return same and refused, f"exit codes {rcs}; second: {line}; first bit-identical: {same}"


def _interrupt_cache(w: Work, name: str, send) -> tuple[bool, str]:
    """Stop a process-cluster cache-teacher run with `send(proc)` once a group is published: one
    ``error:`` line saying what was kept, no noise; the rerun (no warnings either) completes the
    store, with the kept groups counted as already done."""
    store = w.path(name)
    store.parent.mkdir(parents=True, exist_ok=True)
    log = store.with_suffix(".log")
    proc = spawn(["cache-teacher", "--shards", w.shards, "--out", store,
                  *w.cache_args(processes=True)], log=log)  # fmt: skip
    if not poll_until(lambda: group_dirs(store, tmp=False), proc, timeout=180):
        wait(proc, 120)
        return False, "not injected: no group published while the run was alive"
    send(proc)
    ended = _ended(proc, log, 90)
    if ended.returncode == 124:
        return False, "did not stop within 90 s"
    errors = [line for line in ended.stderr.splitlines() if line.startswith("error: ")]
    kept = len(group_dirs(store, tmp=False))
    said = len(errors) == 1 and "interrupted" in errors[0] and f"{kept} of" in errors[0]
    noise = _noise(ended.stderr)
    rerun = clip("cache-teacher", "--shards", w.shards, "--out", store,
                 *w.cache_args(processes=True), timeout=300)  # fmt: skip
    rerun_noise = _noise(rerun.stderr)
    ok, note = verify_ok(store, w.shards) if rerun.returncode == 0 else (False, "rerun failed")
    ok = ok and said and not noise and not rerun_noise and f"({kept} already done" in rerun.stdout
    line = errors[-1][:110] if errors else "no error line"
    return (
        ok,
        f"rc {ended.returncode}: {line}; noise {noise[:2]}, rerun noise {rerun_noise[:2]}; {note}",
    )


def f_sigint_cache_group(w: Work) -> tuple[bool, str]:
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group (driver, worker
    processes and their children)."""
    return _interrupt_cache(w, "sigint-cache", lambda p: os.killpg(p.pid, signal.SIGINT))


def f_sigterm_cache_driver(w: Work) -> tuple[bool, str]:
    """`kill PID` of the driver alone (its workers are left to it)."""
    return _interrupt_cache(w, "sigterm-cache", lambda p: os.kill(p.pid, signal.SIGTERM))


def _python(args: list[object], log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, *map(str, args)], cwd=REPO, env=ENV, start_new_session=True,
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    SPAWNED.append(proc)
    return proc


def f_external_cluster_killed_worker(w: Work) -> tuple[bool, str]:
    """`cache-teacher --scheduler` on a `dask scheduler` + two `dask worker --no-nanny`; one
    worker is SIGKILLed while it writes a group: the run still caches every shard (the other
    worker's writer removes the dead one's temporary group) and `--verify` passes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    root = w.path("external-cluster")
    root.mkdir(parents=True)
    dask = ["-m", "dask"]
    _python([*dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
            root / "scheduler.log")  # fmt: skip
    workers = [_python([*dask, "worker", address, "--no-nanny", "--nthreads", 1, "--host",
                        "127.0.0.1", "--no-dashboard", "--name", f"w{i}"],
                       root / f"worker{i}.log") for i in range(2)]  # fmt: skip
    from distributed import Client

    with Client(address, timeout=60 * SLOW) as client:
        client.wait_for_workers(2, timeout=60 * SLOW)
    store = root / "store"
    driver = spawn(["cache-teacher", "--shards", w.shards, "--out", store, *TEACHER_ARGS,
                    "--scheduler", address, "--device", "cpu", "--workers", 0, "--batch-size", 2],
                   log=root / "driver.log")  # fmt: skip
    pids = {p.pid for p in workers}
    victim = poll_until(lambda: (pid := writer_pid(store)) in pids and pid, driver)
    if not victim:
        wait(driver, 120)
        return False, "not injected: no worker seen writing"
    os.kill(int(victim), signal.SIGKILL)
    next(p for p in workers if p.pid == victim).wait(timeout=10)
    rc = wait(driver, 180)
    if rc != 0:
        return False, f"run rc {rc} after losing a worker (see {root / 'driver.log'})"
    ok, note = verify_ok(store, w.shards)
    ok = ok and not group_dirs(store, tmp=True)
    return ok, f"run completed without the killed worker; {note}"


FAULTS_23 = [
    ("two train runs of other settings, one folder", f_two_trains_other_settings),
    ("Ctrl-C (SIGINT to the group) of cache-teacher", f_sigint_cache_group),
    ("SIGTERM to the cache-teacher driver", f_sigterm_cache_driver),
    ("kill -9 a worker of an external dask cluster", f_external_cluster_killed_worker),
]
