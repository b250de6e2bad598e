"""Store writer: chunked streaming, nothing visible until commit, reruns, object stores."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from store_helpers import SHARD, batch, expected_samples, spec, write_shard

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import TeacherStore, TeacherStoreWriter


def test_writer_streams_whole_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    writer = TeacherStoreWriter(tmp_path / "s", spec(), chunk_samples=4)
    with writer.open_shard(SHARD) as group:
        group.append(*batch(rng, 0, 10))
        # two full chunks are on storage already; the rest waits in a buffer < one chunk
        assert group.group["image_s1"].nchunks_initialized == 2
        assert group.group["keys"].nchunks_initialized == 0  # one chunk holds a shard's keys
        group.commit()


@pytest.mark.parametrize("n", [7, 12, 30])
def test_arrays_are_allocated_once_for_the_expected_count(tmp_path: Path, n: int) -> None:
    """Arrays start at the count the caller expects (no resize per chunk: each is a metadata
    rewrite) and are trimmed once at commit when fewer came, grown when more did."""
    rng = np.random.default_rng(0)
    writer = TeacherStoreWriter(tmp_path / "s", spec(), chunk_samples=4)
    resizes = []
    with writer.open_shard(SHARD, expected=12) as group:
        assert group.group["image_s1"].shape[0] == 12 and group.group["keys"].shape[0] == 12
        for app in group._app.values():
            real = app.array.resize
            app.array.resize = lambda shape, real=real, name=app.array.name: (
                resizes.append(name), real(shape))  # fmt: skip
        batches = [batch(rng, start, min(5, n - start)) for start in range(0, n, 5)]
        for keys, feats in batches:
            group.append(keys, feats)
        assert not any("image" in r for r in resizes) or n > 12
        group.commit()
    per_array = {r: resizes.count(r) for r in set(resizes)}
    assert all(v <= 1 for k, v in per_array.items() if "image" in k and n <= 12), per_array
    got = list(TeacherStore(tmp_path / "s").iter_shard(SHARD))
    assert [k for k, _ in got] == [k for k, _ in expected_samples(batches)]
    for (_, have), (_, want) in zip(got, expected_samples(batches), strict=True):
        for tap, x in want.items():
            np.testing.assert_array_equal(have[tap], x.astype(np.float16).astype(np.float32))


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


def _tmp_dirs(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def _values(root: Path) -> dict:
    return {k: f for k, f in TeacherStore(root).iter_shard(SHARD)}


def test_overlapping_writers_never_publish_zeros(tmp_path: Path) -> None:
    # A stalls after its first chunk; B (a rerun) caches the same shard meanwhile. B must not
    # remove A's group, and A's late commit must not replace B's group with a holed copy.
    root = tmp_path / "s"
    writer = TeacherStoreWriter(root, spec(), chunk_samples=4)
    a = writer.open_shard(SHARD)
    a.append(*batch(np.random.default_rng(0), 0, 6))  # one chunk of each array on storage
    want = write_shard(root, spec(), [10], seed=1)  # B: opens, writes and commits
    a.append(*batch(np.random.default_rng(2), 6, 4))
    assert a.commit() == 10  # the shard was published meanwhile: A drops its copy
    got = _values(root)
    for key, sample in expected_samples(want):
        for tap, value in sample.items():
            np.testing.assert_array_equal(got[key][tap], value.astype(np.float16))
    assert TeacherStore(root).verify()["ok"] and not _tmp_dirs(root)


def test_second_process_leaves_a_live_writer_alone(tmp_path: Path) -> None:
    root = tmp_path / "s"
    TeacherStoreWriter(root, spec(), chunk_samples=4)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from store_helpers import batch, spec, SHARD
        from clipocr.pipeline.teacher_store import TeacherStoreWriter
        group = TeacherStoreWriter({str(root)!r}, spec(), chunk_samples=4).open_shard(SHARD)
        group.append(*batch(np.random.default_rng(0), 0, 6))
        print("half", flush=True)
        sys.stdin.readline()  # stalled until told to go on
        group.append(*batch(np.random.default_rng(2), 6, 4))
        print(group.commit(), flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "half"
        live = _tmp_dirs(root)
        want = write_shard(root, spec(), [10], seed=1)
        assert _tmp_dirs(root) == live  # the live writer's group was left alone
        out, _ = proc.communicate("go\n", timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "10"
    got = _values(root)
    assert not any((got[k]["image_s1"] == 0).all() for k in got)
    for key, sample in expected_samples(want):
        np.testing.assert_array_equal(got[key]["image_s1"], sample["image_s1"].astype(np.float16))
    assert TeacherStore(root).verify()["ok"] and not _tmp_dirs(root)


def test_commit_refuses_a_group_with_a_missing_chunk(tmp_path: Path) -> None:
    root = tmp_path / "s"
    writer = TeacherStoreWriter(root, spec(), chunk_samples=4)
    group = writer.open_shard(SHARD)
    group.append(*batch(np.random.default_rng(0), 0, 10))
    (root / group._dir / "image_s2" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(RuntimeError, match=r"not published: image_s2: 2 of 3 chunk files"):
        group.commit()
    assert TeacherStore(root).shards() == {} and not _tmp_dirs(root)


def test_commit_refuses_a_group_removed_while_writing(tmp_path: Path) -> None:
    root = tmp_path / "s"
    writer = TeacherStoreWriter(root, spec(), chunk_samples=4)
    group = writer.open_shard(SHARD)
    group.append(*batch(np.random.default_rng(0), 0, 6))
    shutil.rmtree(root / group._dir)  # e.g. removed by hand, or by an older version's rerun
    group.append(*batch(np.random.default_rng(1), 6, 6))
    with pytest.raises(RuntimeError, match="removed or taken over"):
        group.commit()
    assert TeacherStore(root).shards() == {} and not _tmp_dirs(root)


def test_object_store_refuses_a_second_writer_while_the_first_lives(tmp_path: Path) -> None:
    root = f"memory://store-{uuid.uuid4().hex}"
    writer = TeacherStoreWriter(root, spec(), chunk_samples=4)
    first = writer.open_shard(SHARD)
    first.append(*batch(np.random.default_rng(0), 0, 5))
    with pytest.raises(InputError, match="being written by pid"):
        writer.open_shard(SHARD)
    first.append(*batch(np.random.default_rng(1), 5, 3))
    assert first.commit() == 8
    assert TeacherStore(root).verify()["ok"]
