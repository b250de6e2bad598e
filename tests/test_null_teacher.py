"""The null teacher stands in for a real one: same features' shapes and dtypes, same store spec
but its own identity, and the real runner and store accept it end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import WORDS, make_shards

from clipocr.cache_teacher import orchestrate
from clipocr.cache_teacher.null_teacher import NULL_MARK, NullTeacher, load_null_teacher
from clipocr.cache_teacher.orchestrate import CacheJob, run_cache
from clipocr.cache_teacher.runner import RunnerConfig, cache_shard
from clipocr.cache_teacher.teacher import TeacherConfig, load_teacher, store_spec
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.precision import autocast
from clipocr.pipeline.shards import load_index, shard_paths
from clipocr.pipeline.teacher_store import TeacherStore, TeacherStoreWriter, shard_group_name

TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 32, "layers": 4, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4},
}
LABELS = ["ab", "hello", "x", "abcdefg", "q"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> TeacherConfig:
    root = tmp_path_factory.mktemp("teacher")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return TeacherConfig(model=str(root / "tiny.json"))


@pytest.fixture(scope="module")
def real(tiny_cfg):
    torch.manual_seed(0)
    return load_teacher(tiny_cfg)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"), WORDS, shard_size=6)  # 6, 6, 4


def _images(b: int) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, 32, 128), dtype=torch.uint8)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_features_have_the_real_teachers_keys_shapes_and_dtypes(real, precision) -> None:
    null = NullTeacher.like(real)
    images = _images(len(LABELS))
    with autocast(precision, CPU):
        want = real.features(images, LABELS)
        got = null.features(images, LABELS)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].shape == value.shape, key
        assert got[key].dtype == value.dtype, key
        assert got[key].device == value.device, key
    assert next(null.parameters()).device == CPU  # where the runner looks for the device
    assert torch.equal(got["text_lengths"], want["text_lengths"])
    for i, label in enumerate(LABELS):  # zero past each label's L + 1 rows, as the real one
        n = len(label) + 1
        assert (got["text_s2"][i, n:] == 0).all()
        assert (got["text_s2"][i, :n].abs().sum(-1) > 0).all()


def test_features_are_fixed_and_in_the_storage_form(real) -> None:
    null = NullTeacher.like(real)
    first = null.features(_images(4), LABELS[:4])
    again = null.features(_images(4), LABELS[:4])
    for key in first:
        assert torch.equal(first[key], again[key]), key
    # normalised form: per-token zero mean / unit variance taps, unit-length embedding
    tok = first["image_s1"]
    assert torch.allclose(tok.mean(-1), torch.zeros(()), atol=1e-4)
    assert torch.allclose(first["text_emb"].norm(dim=-1), torch.ones(()), atol=1e-4)
    # a larger batch later is served too
    assert null.features(_images(7), ["ab"] * 7)["image_s3"].shape[0] == 7


def test_store_spec_has_the_real_shapes_but_never_the_real_identity(real, tmp_path) -> None:
    null = NullTeacher.like(real)
    have, want = store_spec(null, "zstd"), store_spec(real, "zstd")
    assert have.dims == want.dims == real.dims
    assert (have.form, have.charset, have.taps) == (want.form, want.charset, want.taps)
    assert have.preprocessing == want.preprocessing
    assert have.teacher["architecture_sha256"].startswith(NULL_MARK)
    assert have.teacher["checksum"] is None
    assert have.identity() != want.identity()
    TeacherStoreWriter(tmp_path / "store", want)
    with pytest.raises(InputError, match="another teacher"):  # a real store refuses a null one
        TeacherStoreWriter(tmp_path / "store", have)


def test_refuses_what_the_real_teacher_refuses(real) -> None:
    null = NullTeacher.like(real)
    with pytest.raises(ValueError, match="uint8"):
        null.features(_images(2).float(), ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        null.features(_images(2), ["a"])


def test_cache_shard_with_the_null_teacher_makes_a_verified_store(real, shards, tmp_path) -> None:
    null = NullTeacher.like(real)
    writer = TeacherStoreWriter(tmp_path / "store", store_spec(null, "zstd"))
    cfg = RunnerConfig(batch_size=4, workers=0)
    counts = []
    for path in shard_paths(shards):
        with writer.open_shard(shard_group_name(path)) as group:
            counts.append(cache_shard(null, group, path, cfg)["count"])
    assert counts == [6, 6, 4]
    store = TeacherStore(tmp_path / "store")
    report = store.verify(load_index(shards))
    assert report["ok"], report
    assert store.shards() == {"shard-000000": 6, "shard-000001": 6, "shard-000002": 4}


def test_run_cache_with_the_null_teacher(tiny_cfg, shards, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(orchestrate, "load_teacher", load_null_teacher)
    orchestrate._cached_teacher.cache_clear()
    try:
        job = CacheJob(str(shards), str(tmp_path / "store"), tiny_cfg,
                       RunnerConfig(batch_size=4, workers=0))  # fmt: skip
        summary = run_cache(job, dask_workers=1, processes=False, progress=False)
    finally:
        orchestrate._cached_teacher.cache_clear()
    assert not summary.failed and summary.samples == len(WORDS)
    store = TeacherStore(tmp_path / "store")
    assert store.verify(load_index(shards))["ok"]
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["teacher"]["architecture_sha256"].startswith(NULL_MARK)
