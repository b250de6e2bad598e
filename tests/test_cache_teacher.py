"""The caching job end to end on a tiny random open_clip teacher (CPU, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import WORDS, make_shards
from safetensors.torch import save_file
from typer.testing import CliRunner

from clipocr.cache_teacher import runner as runner_mod
from clipocr.cache_teacher.orchestrate import CacheJob, run_cache
from clipocr.cache_teacher.runner import LoaderFailed, RunnerConfig, cache_shard
from clipocr.cache_teacher.teacher import TeacherConfig, load_teacher
from clipocr.commands.app import app
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import LmdbWriter
from clipocr.pipeline.shards import prepare_shards
from clipocr.pipeline.teacher_store import TeacherStore

TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 32, "layers": 4, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4},
}


def write_tiny_teacher(root: Path) -> TeacherConfig:
    """The TINY open_clip model (seed-0 weights) written as a config + weights file in `root`."""
    (root / "tiny.json").write_text(json.dumps(TINY))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "w.safetensors")
    )
    return TeacherConfig(model=str(root / "tiny.json"), pretrained=str(root / "w.safetensors"))


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> TeacherConfig:
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"), WORDS, shard_size=6)  # 6, 6, 4


def _job(shards: Path, out: Path, teacher: TeacherConfig, **runner) -> CacheJob:
    return CacheJob(str(shards), str(out), teacher, RunnerConfig(batch_size=4, workers=0, **runner))


def _arrays(store: Path) -> dict:
    s = TeacherStore(store)
    return {k: f for name in sorted(s.shards()) for k, f in s.iter_shard(name)}


def _assert_same_stores(a: Path, b: Path) -> None:
    """Same keys in the same order, every tap of every sample equal."""
    one, two = _arrays(a), _arrays(b)
    assert list(one) == list(two)
    for key in one:
        for tap in one[key]:
            np.testing.assert_array_equal(one[key][tap], two[key][tap])


def test_store_holds_the_teachers_features(shards, tiny_teacher, tmp_path) -> None:
    out = tmp_path / "store"
    summary = run_cache(_job(shards, out, tiny_teacher), dask_workers=1, processes=False,
                        progress=False)  # fmt: skip
    assert len(summary.done) == 3 and not summary.failed
    store = TeacherStore(out)
    assert store.shards() == {"shard-000000": 6, "shard-000001": 6, "shard-000002": 4}
    assert store.verify()["ok"]
    # Features equal a direct teacher call on the same images (float16 storage).
    from clipocr.pipeline.shards import ShardReader

    teacher = load_teacher(tiny_teacher)
    items = list(ShardReader(shards))[:4]
    direct = teacher.features(torch.stack([i for _, i, _ in items]), [lab for _, _, lab in items])
    stored = _arrays(out)
    for row, (key, _, label) in enumerate(items):
        np.testing.assert_allclose(
            stored[key]["image_s2"], direct["image_s2"][row].numpy(), atol=2e-3, rtol=2e-3
        )
        n = len(label) + 1
        np.testing.assert_allclose(
            stored[key]["text_s3"], direct["text_s3"][row, :n].numpy(), atol=2e-3, rtol=2e-3
        )
    assert store.manifest["teacher"]["checksum"] == teacher.fingerprint()["weights_sha256"]
    assert store.spec.dims == {"image_tokens": 17, "image": 32, "text": 32, "emb": 24}


def test_two_dask_workers_make_the_same_store(shards, tiny_teacher, tmp_path) -> None:
    run_cache(_job(shards, tmp_path / "one", tiny_teacher), dask_workers=1, processes=False,
              progress=False)  # fmt: skip
    run_cache(_job(shards, tmp_path / "two", tiny_teacher), dask_workers=2, processes=False,
              progress=False)  # fmt: skip
    _assert_same_stores(tmp_path / "one", tmp_path / "two")


def test_interrupted_shard_stays_invisible_and_rerun_completes(
    shards, tiny_teacher, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "store"
    real = runner_mod.cache_shard

    def dies_in_second_shard(teacher, group, shard_path, cfg, on_batch=None):
        def crash_after_first_batch(n: int) -> None:
            if shard_path.name == "shard-000001.tar":
                raise RuntimeError("worker killed")  # after a batch reached the group

        return real(teacher, group, shard_path, cfg, crash_after_first_batch)

    monkeypatch.setattr("clipocr.cache_teacher.orchestrate.cache_shard", dies_in_second_shard)
    summary = run_cache(_job(shards, out, tiny_teacher), dask_workers=1, processes=False,
                        progress=False, retries=0)  # fmt: skip
    assert list(summary.failed) == ["shard-000001.tar"]
    assert set(TeacherStore(out).shards()) == {"shard-000000", "shard-000002"}
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]

    monkeypatch.setattr("clipocr.cache_teacher.orchestrate.cache_shard", real)
    summary = run_cache(_job(shards, out, tiny_teacher), dask_workers=1, processes=False,
                        progress=False)  # fmt: skip
    assert summary.already_done == 2 and len(summary.done) == 1
    assert TeacherStore(out).verify()["ok"]


def test_corrupt_image_is_recorded_as_missing(tiny_teacher, tmp_path) -> None:
    from conftest import text_image

    db = tmp_path / "db"
    with LmdbWriter(db) as w:
        w.add(text_image("good"), "good")
        w.add(b"\x89PNG\r\n\x1a\n" + b"broken", "broken")  # PNG magic, undecodable body
        w.add(text_image("fine"), "fine")
    prepare_shards([db], tmp_path / "shards", Charset.from_name("36"), progress=False)
    out = tmp_path / "store"
    summary = run_cache(_job(tmp_path / "shards", out, tiny_teacher), dask_workers=1,
                        processes=False, progress=False)  # fmt: skip
    assert summary.done[0]["missing"] == ["shard-000000/000001"]
    assert summary.missing == 1 and summary.samples == 2
    store = TeacherStore(out)
    assert store.missing("shard-000000") == ["shard-000000/000001"]
    assert [k for k, _ in store.iter_shard("shard-000000")] == [
        "shard-000000/000000", "shard-000000/000002",
    ]  # fmt: skip
    assert store.verify({"shards": [{"name": "shard-000000.tar", "count": 3}]})["ok"]


def test_other_teacher_into_same_store_is_refused(shards, tiny_teacher, tmp_path) -> None:
    out = tmp_path / "store"
    run_cache(_job(shards, out, tiny_teacher), dask_workers=1, processes=False, progress=False)
    crop = TeacherConfig(tiny_teacher.model, tiny_teacher.pretrained, pos_embed="interpolate")
    with pytest.raises(InputError, match="another teacher setup"):
        run_cache(_job(shards, out, crop), dask_workers=1, processes=False, progress=False)


def test_cli_cache_and_verify(shards, tiny_teacher, tmp_path) -> None:
    out = tmp_path / "store"
    cli = CliRunner()
    result = cli.invoke(app, [
        "cache-teacher", "--shards", str(shards), "--out", str(out),
        "--clip-model", tiny_teacher.model, "--clip-pretrained", tiny_teacher.pretrained,
        "--device", "cpu", "--batch-size", "4", "--workers", "0", "--dask-threads",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cached 16 samples from 3 shard(s)" in result.output
    assert json.loads((out / "cache-config.json").read_text())["runner"]["batch_size"] == 4
    result = cli.invoke(app, ["cache-teacher", "--verify", str(out), "--shards", str(shards)])
    assert (
        result.exit_code == 0
        and "16 samples" in result.output
        and "KB/sample" in result.output
        and "OK" in result.output
    )


def test_cli_bad_input(tmp_path) -> None:
    result = CliRunner().invoke(app, ["cache-teacher", "--shards", str(tmp_path / "nope"),
                                      "--out", str(tmp_path / "s")])  # fmt: skip
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError) and "no such shard folder" in str(
        result.exception
    )


def test_store_of_other_images_with_the_same_words_is_caught(shards, tiny_teacher, tmp_path):
    out = tmp_path / "store"
    run_cache(_job(shards, out, tiny_teacher), dask_workers=1, processes=False, progress=False)
    store = TeacherStore(out)
    assert store.check_sources(shards, thorough=True) == []
    from conftest import text_image

    other, db = tmp_path / "other", tmp_path / "other_lmdb"
    with LmdbWriter(db) as w:
        for word in WORDS:
            w.add(text_image(word, size=(110, 32)), word)  # same words, other images
    prepare_shards([db], other, Charset.from_name("36"), 6, progress=False)
    with pytest.raises(InputError, match="cached from other shards"):
        store.check_sources(other)
    result = CliRunner().invoke(
        app, ["cache-teacher", "--verify", str(out), "--shards", str(other)]
    )
    assert result.exit_code == 1 and "cached from another source shard" in result.output
    result = CliRunner().invoke(
        app, ["cache-teacher", "--verify", str(out), "--shards", str(shards)]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("fault", ["exit", "stall"])
def test_dead_or_stalled_decoding_worker_fails_the_shard(shards, tiny_teacher, tmp_path, fault):
    import os
    import threading
    import time

    from clipocr.cache_teacher.decode_pool import DecodePool, decode_training
    from clipocr.cache_teacher.teacher import store_spec
    from clipocr.pipeline.shards import iter_shard_raw
    from clipocr.pipeline.teacher_store import TeacherStoreWriter

    fourth = list(iter_shard_raw(shards / "shard-000000.tar"))[3][1]

    def faulty(data, out):  # runs in the (forked) decode worker
        if data == fourth:
            if fault == "exit":
                os._exit(1)  # as if the worker were killed (kill -9, OOM killer)
            time.sleep(600)
        decode_training(data, out)

    pool = DecodePool(1, 2, timeout=3, decode=faulty)
    teacher = load_teacher(tiny_teacher)
    writer = TeacherStoreWriter(tmp_path / "store", store_spec(teacher, "zstd"))
    cfg = RunnerConfig(batch_size=2, workers=1, loader_timeout=3)
    outcome: dict = {}

    def run() -> None:
        try:
            with writer.open_shard("shard-000000") as group:
                cache_shard(teacher, group, shards / "shard-000000.tar", cfg, pool=pool)
        except Exception as err:
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "cache_shard hung on a dead/stalled decode worker"
    assert isinstance(outcome.get("error"), LoaderFailed)
    assert "shard-000000.tar: image decoding failed" in str(outcome["error"])
    assert TeacherStore(tmp_path / "store").shards() == {}


def test_a_cpu_task_leaves_the_decode_workers_their_cores(shards, tiny_teacher, tmp_path,
                                                         monkeypatch) -> None:  # fmt: skip
    """On CPU a task gives the teacher the usable cores minus its decode workers (or --threads)."""
    import os

    import torch

    from clipocr.cache_teacher.orchestrate import run_shard
    from clipocr.pipeline.shards import shard_paths

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        job = CacheJob(
            str(shards),
            str(tmp_path / "a"),
            tiny_teacher,
            RunnerConfig(batch_size=4, workers=1),
            device="cpu",
            text_layout="ragged",
        )  # fmt: skip  (no text table to fill first)
        run_shard(job, str(shard_paths(shards)[0]))
        assert torch.get_num_threads() == 2
        job.threads = 1
        run_shard(job, str(shard_paths(shards)[0]))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_text_tower_runs_once_per_distinct_label(tiny_teacher, tmp_path, monkeypatch) -> None:
    """Table layout: labels repeated across shards get one table row, computed once; shards are
    cached through the image taps alone; a later run adds a part for its new labels only."""
    from clipocr.cache_teacher.teacher import Teacher

    words = ["ab", "cat", "ab", "x", "cat", "ab", "x", "ab", "cat", "dog", "ab", "owl"]
    shards = make_shards(tmp_path / "data", words, shard_size=4)  # ab cat ab x | cat ab x ab | …
    index_path = shards / "shards.json"
    full = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**full, "shards": full["shards"][:2]}))  # run 1: 2 shards
    seen: list[tuple] = []  # the token rows the text tower ran on
    real = Teacher.text_stages

    def counting(self, tokens, lengths):
        seen.extend(tuple(t) for t in tokens.tolist())
        return real(self, tokens, lengths)

    monkeypatch.setattr(Teacher, "text_stages", counting)
    out = tmp_path / "store"
    run_cache(_job(shards, out, tiny_teacher), dask_workers=1, processes=False, progress=False)
    assert len(seen) == 3  # ab, cat, x: once each, not once per image (8)
    index_path.write_text(json.dumps(full))  # run 2: the third shard brings "dog" and "owl"
    seen.clear()
    run_cache(_job(shards, out, tiny_teacher), dask_workers=1, processes=False, progress=False)
    assert len(seen) == 2
    store = TeacherStore(out)
    assert store.manifest["text_layout"] == "table" and store.verify()["ok"]
    parts = sorted(p.name for p in (out / "__text_table").iterdir())
    assert parts == ["part-000000", "part-000001"]
    teacher = load_teacher(tiny_teacher)
    direct = teacher.table_features(["ab", "dog"], "masked")
    stored = _arrays(out)
    for feats in stored.values():
        label = str(feats["text_label"])
        if label in ("ab", "dog"):
            row = ["ab", "dog"].index(label)
            np.testing.assert_allclose(feats["text_s2"], direct["text_s2"][row, : len(label) + 1],
                                       atol=2e-3, rtol=2e-3)  # fmt: skip
    assert [str(f["text_label"]) for f in stored.values()] == words


def test_cli_text_pad_align_stores_the_pad_features(shards, tiny_teacher, tmp_path) -> None:
    out = tmp_path / "store"
    result = CliRunner().invoke(app, [
        "cache-teacher", "--shards", str(shards), "--out", str(out), "--clip-model",
        tiny_teacher.model, "--clip-pretrained", tiny_teacher.pretrained, "--batch-size", "4",
        "--workers", "0", "--dask-threads", "--text-pad", "align",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    store = TeacherStore(out)
    assert store.manifest["text_pad"] == "align"
    assert json.loads((out / "cache-config.json").read_text())["text_pad"] == "align"
    key, feats = next(iter(store.iter_shard("shard-000000", "align")))
    assert feats["text_s1"].shape[0] == 26
    label = str(feats["text_label"])
    want = load_teacher(tiny_teacher).table_features([label], "align")["text_s1"][0]
    np.testing.assert_allclose(feats["text_s1"], want.numpy(), atol=2e-3, rtol=2e-3)
    result = CliRunner().invoke(app, ["cache-teacher", "--shards", str(shards), "--out",
                                      str(tmp_path / "x"), "--text-layout", "ragged",
                                      "--text-pad", "align"])  # fmt: skip
    assert isinstance(result.exception, InputError)
    assert "--text-pad align needs --text-layout table" in str(result.exception)


def test_one_decode_pool_serves_every_shard_of_a_runner(shards, tiny_teacher, tmp_path,
                                                        monkeypatch) -> None:  # fmt: skip
    """Decode workers start once per runner, not per shard, and give the store the in-process
    decode's features exactly."""
    from clipocr.cache_teacher.decode_pool import DecodePool

    started: list[list[int]] = []
    real_init = DecodePool.__init__

    def counting(self, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        started.append(self.pids)

    monkeypatch.setattr(DecodePool, "__init__", counting)
    job = CacheJob(str(shards), str(tmp_path / "pool"), tiny_teacher,
                   RunnerConfig(batch_size=4, workers=2))  # fmt: skip
    summary = run_cache(job, dask_workers=1, processes=False, progress=False)
    assert len(summary.done) == 3 and not summary.failed
    assert [len(pids) for pids in started] == [2]  # one pool of two workers for three shards
    run_cache(_job(shards, tmp_path / "inline", tiny_teacher), dask_workers=1, processes=False,
              progress=False)  # fmt: skip
    _assert_same_stores(tmp_path / "pool", tmp_path / "inline")
