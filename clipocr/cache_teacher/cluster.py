"""The dask cluster of a `cache-teacher` run: started, stopped and interrupted quietly.

What a user should see of the cluster is nothing, unless something is lost. Left to itself,
dask prints its shutdown: the local cluster is closed at interpreter exit, where each nanny
gives its worker process 4 s to exit and then kills it with a warning (a worker that has
imported torch takes about that long to tear down on a busy machine); and Ctrl-C, which the
terminal sends to the whole process group, raises KeyboardInterrupt inside every worker
process and its nanny, printing their tracebacks, broken connections and leaked semaphores.

So here: worker processes are started with SIGINT and SIGTERM ignored (they inherit it), so the
driver alone decides when they stop; SIGTERM of the driver is turned into the same
KeyboardInterrupt as Ctrl-C; on success the workers are closed with time to exit; on an
interrupt the cluster is closed with dask's logging silenced and the run ends with one
`RunInterrupted` line that says what was kept and how to go on. Nothing finished is lost by an
interrupt: a shard group becomes visible only once complete, and the next run removes the
temporary group of a worker that was stopped mid-shard.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dask
import torch
from distributed import Client, LocalCluster

from clipocr.pipeline.errors import RunInterrupted

# Seconds a worker process is given to exit once asked to (after that its nanny kills it).
WORKER_EXIT_S = 60.0
# On an interrupt: how long a running task may go on before its worker is killed.
INTERRUPT_EXIT_S = 5.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while inside, as Ctrl-C does, so a
    `kill PID` stops the run through the same clean path (no-op outside the main thread)."""
    if not _in_main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextmanager
def _stop_signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored while inside: a process started now inherits that (an ignored
    signal stays ignored across exec, and Python installs no handler over it)."""
    if not _in_main_thread():
        yield
        return
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def dask_setup(worker: object) -> None:
    """Run by each local worker as it starts (a dask preload): ignore Ctrl-C and SIGTERM, as a
    worker started by `cluster_client` already does (this covers one its nanny restarts), and
    leave unsaid the cancelled task of a worker stopped by an interrupt."""
    if _in_main_thread():
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)


async def _close_workers(cluster: LocalCluster, timeout: float) -> None:
    await asyncio.gather(*(w.close(timeout=timeout) for w in list(cluster.workers.values())))


def _stop(client: Client, cluster: LocalCluster | None, worker_exit_s: float) -> None:
    client.close()
    if cluster is not None:
        # The nannies' own close would give each worker 4 s; ours gives `worker_exit_s`.
        cluster.sync(_close_workers, cluster, worker_exit_s)
        cluster.close()


@contextmanager
def _quiet_dask() -> Iterator[None]:
    """dask's loggers silenced (a stopped run's broken connections, killed workers)."""
    logger = logging.getLogger("distributed")
    before = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def cluster_client(
    scheduler: str | None,
    workers: int | None,
    processes: bool,
    interrupted: Callable[[], str],
) -> Iterator[Client]:
    """A client of the running cluster at `scheduler`, or of a `LocalCluster` of `workers`
    (default: one per visible GPU, or 1) started here as processes or threads.

    On Ctrl-C or SIGTERM inside, the cluster is stopped quietly (tasks not yet started are
    dropped; a local worker still writing gets `INTERRUPT_EXIT_S`, then is killed) and
    `RunInterrupted(interrupted())` is raised instead: `interrupted` says what was kept.
    """
    cluster = None
    with sigterm_interrupts():
        try:
            if scheduler:
                client = Client(scheduler)
            else:
                n = workers or max(torch.cuda.device_count(), 1)
                # Worker processes must be allowed children: each task decodes in DataLoader
                # workers.
                dask.config.set({"distributed.worker.daemon": False})
                preloads = dask.config.get("distributed.worker.preload") or []
                if __name__ not in preloads:  # `dask_setup` below, in each worker
                    dask.config.set({"distributed.worker.preload": [*preloads, __name__]})
                with _stop_signals_ignored():
                    cluster = LocalCluster(
                        n_workers=n, threads_per_worker=1, processes=processes,
                        dashboard_address=":0",
                    )  # fmt: skip
                client = Client(cluster)
        except KeyboardInterrupt:
            if cluster is not None:
                with _stop_signals_ignored(), _quiet_dask():
                    cluster.close()
            raise RunInterrupted(interrupted()) from None
        try:
            yield client
        except KeyboardInterrupt:
            # Closing the client drops its tasks that have not started.
            with _stop_signals_ignored(), _quiet_dask():
                _stop(client, cluster, INTERRUPT_EXIT_S)
            raise RunInterrupted(interrupted()) from None
        except BaseException:
            with _stop_signals_ignored(), _quiet_dask():
                _stop(client, cluster, INTERRUPT_EXIT_S)
            raise
        with _stop_signals_ignored():
            _stop(client, cluster, WORKER_EXIT_S)
