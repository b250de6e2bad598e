"""Owner records: a live writer's group is never taken for abandoned, a gone one's is."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from store_helpers import SHARD, batch, spec

from clipocr.pipeline.teacher_store import TeacherStoreWriter
from clipocr.pipeline.teacher_store.ownership import STALE_AFTER_S, OwnerRecord, is_abandoned


def test_staleness_by_process_and_heartbeat() -> None:
    me = OwnerRecord.mine("a" * 32)
    assert not me.is_stale()
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert replace(me, pid=int(proc.stdout), start=None).is_stale()  # that process is gone
    assert replace(me, start="1").is_stale()  # our pid, but another process's start time
    far = replace(me, host="another-host")
    assert not far.is_stale()
    assert replace(far, beat=time.time() - STALE_AFTER_S - 1).is_stale()


def test_a_killed_but_unreaped_writer_counts_as_gone() -> None:
    """A zombie (killed, its parent has not waited for it yet) will never write again."""
    me = OwnerRecord.mine("b" * 32)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline:  # wait until it has exited, without reaping it
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    try:
        assert replace(me, pid=child.pid, start=None).is_stale()
    finally:
        child.wait()


def test_open_shard_removes_only_abandoned_groups(tmp_path: Path) -> None:
    root = tmp_path / "s"
    writer = TeacherStoreWriter(root, spec())
    live, dead = writer.open_shard(SHARD), writer.open_shard(SHARD)
    for group in (live, dead):
        group.append(*batch(np.random.default_rng(0), 0, 2))
    old = replace(dead.owner, host="another-host", beat=time.time() - STALE_AFTER_S - 1)
    old.write(dead.group)  # as if its writer on another host fell silent long ago
    assert is_abandoned(writer.loc, dead._dir) and not is_abandoned(writer.loc, live._dir)
    third = writer.open_shard(SHARD)
    left = sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-"))
    assert left == sorted([live._dir, third._dir])
    third.abort()
    live.abort()
