"""Store writer: chunked streaming, nothing visible until commit, reruns, object stores."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from store_helpers import SHARD, batch, spec, write_shard

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import TeacherStore, TeacherStoreWriter


def test_writer_streams_whole_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    writer = TeacherStoreWriter(tmp_path / "s", spec(), chunk_samples=4)
    with writer.open_shard(SHARD) as group:
        group.append(*batch(rng, 0, 10))
        # two full chunks are on storage already; the rest waits in a buffer < one chunk
        assert group.group["image_s1"].shape[0] == 8
        assert group.group["keys"].shape[0] == 0  # one chunk holds a whole shard's keys
        group.commit()


def test_interrupted_writer_leaves_no_visible_group(tmp_path: Path) -> None:
    root = tmp_path / "s"
    rng = np.random.default_rng(0)
    writer = TeacherStoreWriter(root, spec())
    with pytest.raises(RuntimeError, match="teacher died"):
        with writer.open_shard(SHARD) as group:
            group.append(*batch(rng, 0, 4))
            raise RuntimeError("teacher died")
    assert TeacherStore(root).shards() == {} and not writer.is_complete(SHARD)
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "zarr.json"]


def test_killed_writer_then_rerun_completes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    TeacherStoreWriter(root, spec())  # the driver creates the store before the workers start
    script = textwrap.dedent(
        f"""
        import sys, time, numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from store_helpers import batch, spec, SHARD
        from clipocr.pipeline.teacher_store import TeacherStoreWriter
        group = TeacherStoreWriter({str(root)!r}, spec()).open_shard(SHARD)
        group.append(*batch(np.random.default_rng(0), 0, 6))
        print("half", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half"
    finally:
        proc.kill()
        proc.wait()
    store = TeacherStore(root)
    assert store.shards() == {}
    report = store.verify({"shards": [{"name": f"{SHARD}.tar", "count": 6}]})
    assert not report["ok"] and len(report["stale_temporary_groups"]) == 1
    # the rerun clears the leftover and publishes the shard
    write_shard(root, spec(), [6])
    assert store.shards() == {SHARD: 6}
    report = store.verify({"shards": [{"name": f"{SHARD}.tar", "count": 6}]})
    assert report["ok"] and report["stale_temporary_groups"] == [], report["problems"]


def test_object_store_uses_complete_flag(tmp_path: Path) -> None:
    root = f"memory://store-{uuid.uuid4().hex}"
    rng = np.random.default_rng(0)
    writer = TeacherStoreWriter(root, spec())
    group = writer.open_shard(SHARD)
    group.append(*batch(rng, 0, 5))
    store = TeacherStore(root)
    assert store.shards() == {} and not writer.is_complete(SHARD)  # written in place, not flagged
    with pytest.raises(InputError, match="no complete teacher group"):
        next(store.iter_shard(SHARD))
    group.commit()
    assert store.shards() == {SHARD: 5} and len(list(store.iter_shard(SHARD))) == 5


def test_complete_shard_is_not_reopened_unless_overwrite(tmp_path: Path) -> None:
    write_shard(tmp_path / "s", spec(), [3])
    writer = TeacherStoreWriter(tmp_path / "s", spec())
    assert writer.is_complete(SHARD)
    with pytest.raises(InputError, match="already complete"):
        writer.open_shard(SHARD)
    rng = np.random.default_rng(1)
    with writer.open_shard(SHARD, overwrite=True) as group:
        group.append(*batch(rng, 0, 2))
        group.commit()
    assert TeacherStore(tmp_path / "s").shards() == {SHARD: 2}


def test_append_validates_shapes(tmp_path: Path) -> None:
    writer = TeacherStoreWriter(tmp_path / "s", spec())
    keys, feats = batch(np.random.default_rng(0), 0, 2)
    with writer.open_shard(SHARD) as group:
        with pytest.raises(ValueError, match="image_s1"):
            group.append(keys, feats | {"image_s1": feats["image_s1"][:, :2]})
        with pytest.raises(ValueError, match="taps"):
            group.append(keys, {k: v for k, v in feats.items() if k != "text_emb"})
        with pytest.raises(ValueError, match="text_lengths exceed"):
            group.append(keys, feats | {"text_lengths": np.array([7, 1])})
