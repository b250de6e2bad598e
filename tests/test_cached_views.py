"""Cached views end to end (issue 19): `cache-teacher --views K` on a tiny teacher, then the
training stream replaying them — the pixels the teacher saw, bit for bit, in a DataLoader worker
process after a resume — and the stores that must be refused.

One module-scoped store (16 words, 3 shards, K = 3) serves every test; the cache job's calls
of the teacher are recorded as they happen, so the test compares against what the teacher was
actually fed, not against a recomputation."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import WORDS, fake_store, make_shards
from test_cache_teacher import write_tiny_teacher
from typer.testing import CliRunner

from clipocr.cache_teacher.orchestrate import CacheJob, run_cache
from clipocr.cache_teacher.runner import RunnerConfig
from clipocr.cache_teacher.teacher import Teacher
from clipocr.commands.app import app
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import decode_uint8
from clipocr.pipeline.shards import iter_shard_raw, shard_paths
from clipocr.pipeline.teacher_store import STAGES_IMAGE, TeacherStore
from clipocr.pipeline.views import train_view
from clipocr.train_student.dataset import DistillStream, StreamConfig

K = 3
CS = Charset.from_name("36")


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> dict:
    """A K-view store made by the CLI, and the pixels its teacher was fed: (key, view) → uint8."""
    root = tmp_path_factory.mktemp("views")
    teacher = write_tiny_teacher(root)
    shards = make_shards(root, WORDS, shard_size=6)
    key_of = {label: key for p in shard_paths(shards) for key, _, label in iter_shard_raw(p)}
    calls: list[tuple[list[str], np.ndarray]] = []
    features = Teacher.features

    def recording(self, images, labels, text=True):
        calls.append((list(labels), images.numpy().copy()))
        return features(self, images, labels, text)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Teacher, "features", recording)
        result = CliRunner().invoke(app, [
            "cache-teacher", "--shards", str(shards), "--out", str(root / "store"),
            "--clip-model", teacher.model, "--clip-pretrained", teacher.pretrained,
            "--device", "cpu", "--batch-size", "4", "--workers", "0", "--dask-threads",
            "--dask-workers", "1", "--views", str(K),
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    fed = {}
    for i, (labels, images) in enumerate(calls):  # per batch: view 0, then views 1 … K−1
        for label, pixels in zip(labels, images):
            fed[key_of[label], i % K] = pixels
    return {"root": root, "shards": shards, "store": root / "store", "fed": fed,
            "teacher": teacher}  # fmt: skip


def test_the_store_records_its_views_and_holds_every_view(cached) -> None:
    store = TeacherStore(cached["store"])
    manifest = store.manifest
    assert manifest["format"] == "clipocr-teacher-store/3"
    assert manifest["views"]["count"] == K and store.spec.view_count == K
    assert manifest["views"]["augment"]["seed_function"].startswith("clipocr.view_seed/1")
    assert set(manifest["views"]["augment"]["versions"]) >= {"Pillow", "timm", "numpy"}
    assert len(cached["fed"]) == 16 * K  # every sample's every view went through the teacher
    report = store.verify()
    assert report["ok"] and report["views"] == K, report["problems"]
    # view v's image taps are the teacher's on view v's pixels: the views differ, text does not
    name = sorted(store.shards())[0]
    per_view = [dict(store.iter_shard(name, view=v)) for v in range(K)]
    for key in per_view[0]:  # a view's taps change exactly when its pixels do (1/8: no op drawn)
        for v in range(1, K):
            same = np.array_equal(cached["fed"][key, 0], cached["fed"][key, v])
            assert same == np.array_equal(
                per_view[0][key]["image_s1"], per_view[v][key]["image_s1"]
            )
            np.testing.assert_array_equal(
                per_view[0][key]["text_emb"], per_view[v][key]["text_emb"]
            )
    changed = sum(
        not np.array_equal(cached["fed"][k, 0], cached["fed"][k, 1]) for k, _ in cached["fed"]
    )
    assert changed >= 16 * K // 2
    with pytest.raises(InputError, match="view 3 asked for"):
        store.open_samples(name, view=K)


def test_trainer_worker_replays_the_teachers_pixels_after_a_resume(cached) -> None:
    """Epochs 0..K-1 of a DataLoader worker process, each resumed after its first batch: every
    sample shows view `train_view(seed, epoch, shard)`, its pixels are those the cache job fed
    the teacher for that view, and its image targets are that view's."""
    store = TeacherStore(cached["store"])
    targets = {
        (key, v): feats["image_s3"]
        for v in range(K)
        for name in store.shards()
        for key, feats in store.iter_shard(name, view=v)
    }
    cfg = StreamConfig(batch_size=4, augment=True, seed=5, shuffle_buffer=4, open_shards=3)
    stream = DistillStream(cached["shards"], CS, cfg, store=store)
    seen_views = set()
    checked = 0
    for epoch in range(K):
        stream.set_epoch(epoch, skip_batches=1)  # as a resumed run: the first batch is passed
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=1)
        for batch in loader:
            for key, image, target in zip(batch["keys"], batch["images"], batch["image_s3"]):
                view = train_view(5, epoch, key.split("/")[0], K)
                seen_views.add(view)
                np.testing.assert_array_equal(image.numpy(), cached["fed"][key, view])
                np.testing.assert_array_equal(target.numpy(), targets[key, view])
                checked += 1
    assert checked == K * (16 - 4) and seen_views == set(range(K))


def test_augmentation_off_or_an_old_store_trains_on_the_clean_view(cached, tmp_path) -> None:
    store = TeacherStore(cached["store"])
    plain = DistillStream(cached["shards"], CS, StreamConfig(batch_size=16, augment=False),
                          store=store)  # fmt: skip
    assert plain.views is None
    batch = next(iter(plain))
    for key, image in zip(batch["keys"], batch["images"]):
        np.testing.assert_array_equal(image.numpy(), cached["fed"][key, 0])
    old = fake_store(cached["shards"], tmp_path / "old")  # format 2: one view
    assert TeacherStore(old).spec.view_count == 1 and "views" not in TeacherStore(old).manifest
    stream = DistillStream(cached["shards"], CS, StreamConfig(augment=True), TeacherStore(old))
    assert stream.views is None and stream.view_of("shard-000000") == 0


def test_a_store_of_another_augmentation_is_refused_unless_drift_is_allowed(
    cached, tmp_path, caplog
) -> None:
    other = tmp_path / "other"
    shutil.copytree(cached["store"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    shear = next(op for op in manifest["views"]["augment"]["ops"] if op["name"] == "ShearX")
    shear["args"] = [[-0.3], [0.3]]  # timm's own shear: another augmentation spec
    (other / "manifest.json").write_text(json.dumps(manifest))
    cfg = StreamConfig(batch_size=4, augment=True)
    with pytest.raises(InputError) as err:
        DistillStream(cached["shards"], CS, cfg, store=TeacherStore(other))
    assert "\n" not in str(err.value) and "op ShearX" in str(err.value)
    assert "--allow-view-drift" in str(err.value)
    allowed = StreamConfig(batch_size=4, augment=True, allow_view_drift=True)
    with caplog.at_level(logging.WARNING):
        DistillStream(cached["shards"], CS, allowed, store=TeacherStore(other))
    assert "probe pixels differ" in caplog.text


def test_cache_refuses_another_view_count_into_the_store(cached) -> None:
    for views in (1, 2):
        job = CacheJob(str(cached["shards"]), str(cached["store"]), cached["teacher"],
                       RunnerConfig(batch_size=4, workers=0), views=views)  # fmt: skip
        with pytest.raises(InputError, match=f"holds {K} cached view.*caches {views}"):
            run_cache(job, dask_workers=1, processes=False, progress=False)
    with pytest.raises(InputError, match="--views 0"):
        CacheJob("s", "o", cached["teacher"], views=0)


def test_ragged_layout_views_and_decode_match(cached, tmp_path) -> None:
    """The ragged text layout caches views too (text once, image taps per view), and view 0's
    pixels are the cache's own decode of the shard image."""
    out = tmp_path / "ragged"
    runner = RunnerConfig(batch_size=8, workers=0)
    job = CacheJob(str(cached["shards"]), str(out), cached["teacher"], runner,
                   text_layout="ragged", views=2)  # fmt: skip
    run_cache(job, dask_workers=1, processes=False, progress=False)
    store = TeacherStore(out)
    assert store.verify()["ok"] and store.spec.view_count == 2
    first = next(iter(store.iter_shard("shard-000000", view=1)))[1]
    assert set(STAGES_IMAGE) | {"text_s1", "text_emb"} <= set(first)
    path = shard_paths(cached["shards"])[0]
    key, data, _ = next(iter_shard_raw(path))
    np.testing.assert_array_equal(decode_uint8(data, draft=True), cached["fed"][key, 0])


def test_trainer_refuses_device_augmentation_and_passes_allow_drift(cached, tmp_path) -> None:
    """`--augment-on device` cannot replay a K-view store (refused, one line); a drifted store
    trains with `allow_view_drift` (the flag reaches the stream)."""
    from clipocr.train_student.config import TrainConfig
    from clipocr.train_student.trainer import Trainer

    def cfg(store, **kw) -> TrainConfig:
        return TrainConfig(shards=str(cached["shards"]), teacher_store=str(store),
                           out=str(tmp_path / f"run{len(kw)}"), preset="test", batch_size=4,
                           workers=0, threads=1, progress=False, max_steps=1, **kw)  # fmt: skip

    with pytest.raises(InputError, match="--augment-on device cannot replay"):
        Trainer(cfg(cached["store"], augment_on="device"))
    other = tmp_path / "other"
    shutil.copytree(cached["store"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["views"]["augment"]["versions"]["Pillow"] = "9.0.0"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="Pillow 9.0.0"):
        Trainer(cfg(other))
    trainer = Trainer(cfg(other, allow_view_drift=True))
    assert trainer.stream.views is not None
    trainer.release()


def test_decode_workers_make_the_views_the_in_process_cache_made(cached, tmp_path) -> None:
    """Views made in the decode pool's worker processes (``--workers 2``) are the pixels the
    in-process cache (the fixture's ``--workers 0``) fed the teacher, bit for bit, and so are
    the stores' image taps; and the runner refuses a pool that makes another spec's views."""
    from clipocr.cache_teacher.decode_pool import DecodePool
    from clipocr.cache_teacher.decode_views import ViewSpec
    from clipocr.cache_teacher.runner import cache_shard
    from clipocr.cache_teacher.teacher import load_teacher
    from clipocr.pipeline.teacher_store import TeacherStoreWriter

    key_of = {lab: k for p in shard_paths(cached["shards"]) for k, _, lab in iter_shard_raw(p)}
    calls: list[tuple[list[str], np.ndarray]] = []
    features = Teacher.features

    def recording(self, images, labels, text=True):
        calls.append((list(labels), images.numpy().copy()))
        return features(self, images, labels, text)

    out = tmp_path / "pooled"
    job = CacheJob(str(cached["shards"]), str(out), cached["teacher"],
                   RunnerConfig(batch_size=4, workers=2), views=K)  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Teacher, "features", recording)
        run_cache(job, dask_workers=1, processes=False, progress=False)
    fed = {(key_of[lab], i % K): px for i, (labs, ims) in enumerate(calls)
           for lab, px in zip(labs, ims)}  # fmt: skip
    assert fed.keys() == cached["fed"].keys()
    for where, pixels in fed.items():
        np.testing.assert_array_equal(pixels, cached["fed"][where], err_msg=str(where))
    pooled, inline = TeacherStore(out), TeacherStore(cached["store"])
    for v in range(K):
        got = dict(pooled.iter_shard("shard-000001", view=v))
        for key, feats in inline.iter_shard("shard-000001", view=v):
            np.testing.assert_array_equal(got[key]["image_s2"], feats["image_s2"])
    assert ViewSpec.from_record(inline.spec.views) == ViewSpec(K, 0)
    assert ViewSpec.from_record({}) is None
    teacher = load_teacher(cached["teacher"])
    writer = TeacherStoreWriter(tmp_path / "refused", job.spec(teacher))
    other = DecodePool(0, 4, views=ViewSpec(K, store_seed=1))  # another store's views
    with pytest.raises(ValueError, match="the store wants"), writer.open_shard("s") as group:
        cache_shard(teacher, group, shard_paths(cached["shards"])[0],
                    RunnerConfig(batch_size=4, workers=0), pool=other)  # fmt: skip
