"""The cache's decode pool: same pixels as the training decode, shard order, one pool for many
shards, and a lost or stalled worker fails the shard (LoaderFailed) instead of hanging it."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WORDS, text_image

from clipocr.cache_teacher import decode_pool as pool_mod
from clipocr.cache_teacher.decode_pool import DecodePool, LoaderFailed, decode_training
from clipocr.cache_teacher.decode_views import ViewSpec
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.lmdb_io import LmdbWriter
from clipocr.pipeline.preprocess import load_uint8
from clipocr.pipeline.shards import iter_shard_raw, prepare_shards, shard_paths
from clipocr.pipeline.views import view_batch


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    """16 words in shards of 6, 6, 4; half of them JPEG, so both decoders run."""
    root = tmp_path_factory.mktemp("pool")
    db = root / "db"
    with LmdbWriter(db) as w:
        for i, word in enumerate(WORDS):
            w.add(text_image(word, fmt="JPEG" if i % 2 else "PNG", size=(90 + 7 * i, 32)), word)
    prepare_shards([db], root / "shards", Charset.from_name("36"), 6, progress=False)
    return shard_paths(root / "shards")


def expected(path: Path) -> list[tuple[str, torch.Tensor, str]]:
    return [(k, load_uint8(d, draft=True), lab) for k, d, lab in iter_shard_raw(path)]


def flatten(batches) -> list[tuple[str, torch.Tensor, str]]:
    return [s for b in batches for s in zip(b.keys, b.images, b.labels)]


def same(got, want) -> bool:
    return [(k, lab) for k, _, lab in got] == [(k, lab) for k, _, lab in want] and all(
        torch.equal(a, b) for (_, a, _), (_, b, _) in zip(got, want)
    )


def exit_on(trigger: bytes, data: bytes, out: np.ndarray) -> None:
    if data == trigger:
        os._exit(3)  # as a kill -9 or the OOM killer would end it
    decode_training(data, out)


def stall_on(trigger: bytes, data: bytes, out: np.ndarray) -> None:
    if data == trigger:
        time.sleep(600)
    decode_training(data, out)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_pool_gives_the_training_decode_in_shard_order_for_every_shard(shards, workers) -> None:
    """Bit-equal to `load_uint8(draft=True)` (what the student reads), keys and labels aligned,
    for shards one after another on one pool whose worker processes stay the same."""
    pool = DecodePool(workers, batch_size=4)
    try:
        pids = pool.pids
        assert len(pids) == workers
        for path in shards:
            batches = list(pool.batches(path))
            assert [len(b.keys) for b in batches][:1] == [4]
            assert all(b.images.dtype == torch.uint8 and b.images.is_contiguous() for b in batches)
            assert same(flatten(batches), expected(path))
        assert pool.pids == pids and pool.usable()
    finally:
        pool.close()
    assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_stream_starts_before_the_tar_is_read(shards, monkeypatch) -> None:
    """The first batch comes after reading only what it holds (and the prefetch), not the tar."""
    from clipocr.pipeline import shards as shards_mod

    read: list[str] = []
    real = shards_mod.iter_tar_samples

    def counting(path):
        for key, parts in real(path):
            read.append(key)
            yield key, parts

    monkeypatch.setattr(shards_mod, "iter_tar_samples", counting)
    pool = DecodePool(0, batch_size=2)
    batches = pool.batches(shards[0])
    first = next(batches)
    assert first.keys == ["shard-000000/000000", "shard-000000/000001"] and len(read) == 2
    batches.close()


def test_undecodable_images_are_listed_missing_and_the_rest_kept(tmp_path, caplog) -> None:
    db = tmp_path / "db"
    with LmdbWriter(db) as w:
        for word in ["good", "broken", "fine", "also"]:
            image = b"\x89PNG\r\n\x1a\nbroken" if word == "broken" else text_image(word)
            w.add(image, word)
    prepare_shards([db], tmp_path / "shards", Charset.from_name("36"), progress=False)
    path = shard_paths(tmp_path / "shards")[0]
    for workers in (0, 2):
        pool = DecodePool(workers, batch_size=3)
        try:
            batches = list(pool.batches(path))
        finally:
            pool.close()
        assert [b.missing for b in batches] == [["shard-000000/000001"], []]
        assert [b.labels for b in batches] == [["good", "fine"], ["also"]]
        raw = [s for s in iter_shard_raw(path) if s[2] != "broken"]
        want = [(k, load_uint8(d, draft=True), lab) for k, d, lab in raw]
        assert same(flatten(batches), want)
    assert "shard-000000/000001: undecodable image" in caplog.text


def test_a_consumer_that_stops_early_leaves_the_pool_ready(shards) -> None:
    pool = DecodePool(2, batch_size=2)
    try:
        batches = pool.batches(shards[0])
        next(batches)
        batches.close()  # three batches were still out
        assert pool.usable()
        assert same(flatten(pool.batches(shards[1])), expected(shards[1]))
    finally:
        pool.close()


def _fails_within(pool: DecodePool, path: Path, seconds: float) -> LoaderFailed:
    outcome: dict = {}

    def run() -> None:
        try:
            list(pool.batches(path))
        except Exception as err:
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the pool hung on a dead or stalled worker"
    assert isinstance(outcome.get("error"), LoaderFailed), outcome
    assert f"{path}: image decoding failed" in str(outcome["error"])
    return outcome["error"]


def test_a_dead_worker_fails_the_shard(shards) -> None:
    trigger = list(iter_shard_raw(shards[0]))[4][1]
    pool = DecodePool(2, 2, timeout=30, decode=functools.partial(exit_on, trigger))
    err = _fails_within(pool, shards[0], 60)
    assert "exit code 3" in str(err)
    assert not pool.usable()
    with pytest.raises(LoaderFailed, match="unusable"):
        next(pool.batches(shards[1]))


def test_a_stalled_worker_fails_the_shard_after_the_timeout(shards) -> None:
    trigger = list(iter_shard_raw(shards[0]))[1][1]
    pool = DecodePool(1, 2, timeout=2, decode=functools.partial(stall_on, trigger))
    tic = time.monotonic()
    err = _fails_within(pool, shards[0], 30)
    assert "sent no batch for 2 s" in str(err) and time.monotonic() - tic >= 2
    assert not any(_alive(pid) for pid in pool.pids)  # the stalled worker was killed


def test_shared_pool_is_kept_across_shards_and_replaced_after_a_loss(shards) -> None:
    """One pool per runner thread for all its shards; a worker killed between shards (kill -9)
    makes the next shard start a fresh pool instead of failing; other threads get their own."""
    first = pool_mod.shared_pool(2, 4, 30.0, False)
    try:
        assert pool_mod.shared_pool(2, 4, 30.0, False) is first
        os.kill(first.pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while first.usable() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = pool_mod.shared_pool(2, 4, 30.0, False)
        assert second is not first and not set(second.pids) & set(first.pids)
        assert same(flatten(second.batches(shards[2])), expected(shards[2]))
        other: list[DecodePool] = []
        thread = threading.Thread(
            target=lambda: other.append(pool_mod.shared_pool(0, 4, 30.0, False))
        )
        thread.start()
        thread.join()
        assert other[0] is not second
        assert pool_mod.shared_pool(1, 4, 30.0, False) is not second  # settings changed
    finally:
        pool_mod.shared_pool(0, 1, 1.0, False)  # closes this thread's pool


def test_workers_leave_when_their_runner_is_killed(shards, tmp_path) -> None:
    """A runner killed by kill -9 leaves no decode processes behind (they watch their parent)."""
    script = (
        "import sys, time\n"
        "from clipocr.cache_teacher.decode_pool import DecodePool\n"
        "pool = DecodePool(2, 4)\n"
        "print(*pool.pids, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


@pytest.mark.parametrize("workers", [0, 2])
def test_pool_views_are_view_batch_of_the_decoded_images(tmp_path, workers) -> None:
    """A pool given a store's `ViewSpec` brings views 1…K−1 of every decoded image, bit-equal to
    `view_batch` (the function the trainer replays) of that batch with the spec's seed, magnitude
    and op count — in worker processes and in-process alike; an undecodable sample gets none."""
    db = tmp_path / "db"
    with LmdbWriter(db) as w:
        for i, word in enumerate(WORDS[:7]):
            broken = b"\x89PNG\r\n\x1a\nbroken"
            w.add(broken if i == 2 else text_image(word, fmt="JPEG" if i % 2 else "PNG"), word)
    prepare_shards([db], tmp_path / "shards", Charset.from_name("36"), progress=False)
    path = shard_paths(tmp_path / "shards")[0]
    spec = ViewSpec(count=3, store_seed=11, magnitude=7, num_ops=2)
    pool = DecodePool(workers, batch_size=4, views=spec)
    try:
        batches = list(pool.batches(path))
    finally:
        pool.close()
    assert [b.missing for b in batches] == [["shard-000000/000002"], []]
    raw = [s for s in iter_shard_raw(path) if s[0] != "shard-000000/000002"]
    assert same(flatten(batches), [(k, load_uint8(d, draft=True), lab) for k, d, lab in raw])
    changed = 0
    for batch in batches:
        assert batch.views.shape == (2, len(batch.keys), 3, 32, 128)
        assert batch.views.dtype == torch.uint8
        for v in (1, 2):
            want = view_batch(batch.images.numpy(), batch.keys, v, 11, magnitude=7, num_ops=2)
            np.testing.assert_array_equal(batch.views[v - 1].numpy(), want)
            changed += int(not np.array_equal(want, batch.images.numpy()))
    assert changed >= 2  # the views are augmented, not copies of view 0
    plain = DecodePool(workers, batch_size=4)  # no spec: no views, as before
    try:
        assert all(b.views is None for b in plain.batches(path))
    finally:
        plain.close()


def test_shared_pool_is_keyed_on_the_view_spec(shards) -> None:
    """A thread's pool reused for a store with another view spec would hand out that store's
    views: another spec gets another pool, making its own views."""
    one, two = ViewSpec(2, store_seed=0), ViewSpec(2, store_seed=1)
    try:
        first = pool_mod.shared_pool(0, 4, 30.0, False, views=one)
        assert pool_mod.shared_pool(0, 4, 30.0, False, views=one) is first
        second = pool_mod.shared_pool(0, 4, 30.0, False, views=two)
        assert second is not first and second.views == two
        batch = next(second.batches(shards[0]))
        want = view_batch(batch.images.numpy(), batch.keys, 1, 1)
        np.testing.assert_array_equal(batch.views[0].numpy(), want)
        assert pool_mod.shared_pool(0, 4, 30.0, False).views is None
    finally:
        pool_mod.shared_pool(0, 1, 1.0, False)  # closes this thread's pool


def test_a_view_that_fails_in_a_worker_fails_the_shard_with_its_reason(shards, monkeypatch):
    """An error making a view (a bug, not bad data) reaches the runner as one line naming the
    shard and the error, not as a dead worker; the pool then serves the next shard."""
    from clipocr.cache_teacher import decode_views

    def broken(image, key, view, *args, **kwargs):
        if key == "shard-000000/000005":
            raise ValueError("no view today")
        return image

    monkeypatch.setattr(decode_views, "view_pixels", broken)  # before the fork: workers see it
    pool = DecodePool(2, batch_size=2, views=ViewSpec(2, store_seed=0))
    try:
        with pytest.raises(RuntimeError, match="shard-000000.tar: a decode worker failed on "
                           "batch 2: ValueError: no view today"):  # fmt: skip
            list(pool.batches(shards[0]))
        assert pool.usable()
        assert same(flatten(pool.batches(shards[1])), expected(shards[1]))
    finally:
        pool.close()
