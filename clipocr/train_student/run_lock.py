"""A run folder's owner: an exclusive `flock` on ``RUN/.lock``, held while a run trains in it.

Why: two `train` runs started into one ``--out`` both passed `run_dir.check_run_dir` (neither had
a checkpoint yet), trained side by side, and the second overwrote the first's files: both exited
0, and the first run's work was silently gone (issue 23). The lock makes a second run wait
(``--wait``) or stop in one line naming the holder's pid.

`flock` belongs to the open file, so the kernel drops the lock when its holder dies in any way
(SIGKILL, OOM, power loss of a local disk): a lock file left behind by a dead process is simply
taken over, and its stale pid overwritten; there is no pid to guess about. The file is removed
when its holder releases it, while still holding it; a waiter that then locks the removed file
notices (its inode is no longer the path's) and tries again on the new one, so two runs never
both hold "the" lock. Within one process the lock is shared, not re-taken: a process does not
race itself, and code that opens a second `Trainer` on the same folder (resume tests) must work.
(`flock` is advisory and local: it does not guard a folder shared over NFS between hosts.)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from pathlib import Path

from clipocr.pipeline.errors import InputError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# Resolved run folder → [file descriptor, holders in this process, whether the lock made it].
_HELD: dict[Path, list[int]] = {}


def _holder(path: Path) -> str:
    """The pid written in the lock file, or "unknown" while it is being (re)written."""
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


class RunLock:
    """Exclusive ownership of `run_dir`; `release()` (or leaving the ``with``) gives it up.

    Creates the folder if needed (the lock file lives in it) and, if it created it and nothing
    but the lock was written, removes it again on release: a run refused before it started
    leaves no empty folder behind."""

    def __init__(self, run_dir: Path, wait: bool = False, poll_s: float = 0.5) -> None:
        self.run_dir = Path(run_dir)
        self.key = self.run_dir.resolve()
        self.path = self.run_dir / LOCK_NAME
        self._released = False
        if self.key in _HELD:
            _HELD[self.key][1] += 1
            return
        created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = self._acquire(wait, poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[self.key] = [fd, 1, int(created)]

    def _acquire(self, wait: bool, poll_s: float) -> int:
        told = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the holder we waited for removed the folder it made
                self.run_dir.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                pid = _holder(self.path)
                if not wait:
                    raise InputError(
                        f"{self.run_dir}: another train run (pid {pid}) is using this folder; "
                        "wait for it (--wait), or train into another --out"
                    ) from None
                if not told:
                    log.warning("%s: waiting for the run of pid %s to finish", self.run_dir, pid)
                    told = True
                time.sleep(poll_s)
                continue
            try:  # the holder we waited for may have removed the file: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def release(self) -> None:
        """Give the folder up (idempotent); the last holder in this process unlocks it."""
        if self._released:
            return
        self._released = True
        held = _HELD.get(self.key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[self.key]
        self.path.unlink(missing_ok=True)  # while still locked: see the module's docstring
        os.close(held[0])
        if held[2]:
            try:
                self.run_dir.rmdir()  # only if empty: a started run has written its files
            except OSError:
                pass

    def __del__(self) -> None:  # a Trainer dropped without `run` gives its folder up
        try:
            self.release()
        except Exception:  # interpreter shutdown: the process's exit releases the lock anyway
            pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
