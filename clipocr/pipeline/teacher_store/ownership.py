"""Who is writing a group: an owner record in each unpublished group, and when it is stale.

Two ``cache-teacher`` runs may work on one store at once (a rerun started while an old run is
stalled, a dask task retried while its first attempt still writes). Each writer therefore puts
an owner record (its id, host, pid, the pid's start time, a heartbeat) into the ``writer``
attribute of the group it fills, and nobody removes another writer's group unless that writer
is provably gone:

* same host — its process no longer exists (the start time guards against a reused pid);
  a live process is never overruled, even when stopped (SIGSTOP) or slow;
* another host — its heartbeat is older than `STALE_AFTER_S` (refreshed on appends, at most
  every `BEAT_EVERY_S`).

A group without a readable record (a crash right after creating it, or a group left by a
version without records) counts as stale once its folder is older than `STALE_AFTER_S`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass

import zarr

from clipocr.pipeline.teacher_store.location import Location, group_attrs

OWNER_ATTR = "writer"
# A writer appends a batch at least this often (a CPU batch takes seconds to a minute); one
# silent for longer on another host is taken for dead.
STALE_AFTER_S = 1800.0
# How often `OwnerRecord.beat` rewrites the record (it is called once per appended batch).
BEAT_EVERY_S = 30.0


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (Linux), None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), so a reused pid is not taken for alive."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped: it will never write again
        return False
    return start is None or _start_time(pid) in (None, start)


@dataclass
class OwnerRecord:
    """The owner record of one unpublished group (see the module docstring)."""

    id: str
    host: str
    pid: int
    start: str | None
    beat: float

    @classmethod
    def mine(cls, owner_id: str) -> OwnerRecord:
        pid = os.getpid()
        return cls(owner_id, socket.gethostname(), pid, _start_time(pid), time.time())

    def as_attrs(self) -> dict:
        """The record as group attributes (given when creating the group: no window without)."""
        return {OWNER_ATTR: asdict(self)}

    def write(self, group: zarr.Group) -> None:
        group.attrs.update(self.as_attrs())

    def beat_if_due(self, group: zarr.Group) -> None:
        now = time.time()
        if now - self.beat >= BEAT_EVERY_S:
            self.beat = now
            self.write(group)

    def is_stale(self, now: float | None = None, stale_after: float = STALE_AFTER_S) -> bool:
        if self.host == socket.gethostname():
            return not _alive(self.pid, self.start)
        return (now or time.time()) - self.beat > stale_after


def read_owner(loc: Location, group_dir: str) -> OwnerRecord | None:
    """The group's owner record; None if absent or unreadable (being rewritten, truncated)."""
    record = (group_attrs(loc, group_dir) or {}).get(OWNER_ATTR)
    try:
        return OwnerRecord(**record) if isinstance(record, dict) else None
    except TypeError:
        return None


def is_abandoned(loc: Location, group_dir: str, stale_after: float = STALE_AFTER_S) -> bool:
    """True when no live writer can still be filling `group_dir` (safe to remove)."""
    owner = read_owner(loc, group_dir)
    if owner is not None:
        return owner.is_stale(stale_after=stale_after)
    # No record: a writer between creating the group and writing its record (moments), a crash
    # in that moment, or a writer of an older version. Only age tells them apart.
    age = loc.age(group_dir)
    return age is None or age > stale_after
