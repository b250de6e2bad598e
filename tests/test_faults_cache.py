"""`cache-teacher` on a full disk or a bad shard: no dask tracebacks, no retries that would fail
alike; a full disk stops the run with one line naming the store (finished shards kept), a bad
shard fails alone by name.

The disk is simulated by a shard writer that raises ENOSPC, as a real full disk does from a
Zarr chunk write (bench/faults.py fills a real tmpfs).
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import test_cache_teacher
from conftest import WORDS, make_shards

from clipocr.cache_teacher.orchestrate import DiskFull, run_cache, run_shard
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import ShardGroupWriter, TeacherStore

_job = test_cache_teacher._job
tiny_teacher = test_cache_teacher.tiny_teacher  # the same tiny random open_clip teacher fixture


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"), WORDS, shard_size=2)  # 8 shards


def _fill_disk_at(monkeypatch, shard: str) -> list[str]:
    """Appends to `shard`'s group fail as on a full disk; returns the groups tried, in order."""
    real, tried = ShardGroupWriter.append, []

    def append(self, keys, feats):
        tried.append(self.name)
        if self.name == shard:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, keys, feats)

    monkeypatch.setattr(ShardGroupWriter, "append", append)
    return tried


def test_a_full_disk_is_a_task_result_not_an_exception(shards, tiny_teacher, tmp_path,
                                                       monkeypatch) -> None:  # fmt: skip
    """Raised inside the task, dask would log "Compute Failed" with a traceback per retry."""
    _fill_disk_at(monkeypatch, "shard-000000")
    job = _job(shards, tmp_path / "store", tiny_teacher)
    result = run_shard(job, str(shards / "shard-000000.tar"))
    assert result == DiskFull("shard-000000.tar", "No space left on device")
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".tmp-")]


def test_disk_full_stops_the_run_with_one_line_and_keeps_finished_shards(
    shards, tiny_teacher, tmp_path, monkeypatch, capfd
) -> None:
    out = tmp_path / "store"
    tried = _fill_disk_at(monkeypatch, "shard-000001")
    with pytest.raises(InputError) as err:
        run_cache(_job(shards, out, tiny_teacher), dask_workers=1, processes=False,
                  progress=False, retries=2)  # fmt: skip
    message = str(err.value)
    assert message.startswith(f"{out}: disk full while caching the teacher"), message
    assert "shard-000001.tar" in message and "rerun" in message and "\n" not in message
    assert tried.count("shard-000001") == 1  # not retried
    assert len(set(tried)) < 6  # the run stopped: shards no worker had taken were not started
    stderr = capfd.readouterr().err
    assert "Compute Failed" not in stderr and "Traceback" not in stderr, stderr
    kept = TeacherStore(out).shards()
    assert "shard-000000" in kept and "shard-000001" not in kept
    assert f"the {len(kept)} finished shard(s) of 8 are kept" in message
    # tasks running when the disk filled finished (committed or cleaned up): no writer cut off
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]

    monkeypatch.undo()  # space freed: the rerun resumes
    summary = run_cache(_job(shards, out, tiny_teacher), dask_workers=1, processes=False,
                        progress=False)  # fmt: skip
    assert summary.already_done == len(kept) and len(summary.done) == 8 - len(kept)
    assert TeacherStore(out).verify()["ok"]


def test_a_truncated_shard_fails_alone_without_retries_or_tracebacks(
    shards, tiny_teacher, tmp_path, capfd
) -> None:
    """A bad shard is the input's fault: reported by name, not retried (the same bytes would be
    read again), no dask traceback; the other shards are cached."""
    import shutil

    folder = tmp_path / "shards"
    shutil.copytree(shards, folder)
    tar = folder / "shard-000003.tar"
    tar.write_bytes(tar.read_bytes()[:700])  # inside the first image (header: 512 bytes)
    out = tmp_path / "store"
    summary = run_cache(_job(folder, out, tiny_teacher), dask_workers=1, processes=False,
                        progress=False, retries=2)  # fmt: skip
    assert list(summary.failed) == ["shard-000003.tar"]
    assert summary.failed["shard-000003.tar"].startswith(f"{tar}: ")
    assert len(summary.done) == 7 and "shard-000003" not in TeacherStore(out).shards()
    stderr = capfd.readouterr().err
    assert "Compute Failed" not in stderr and "Traceback" not in stderr, stderr
