"""The text table as read by trainers: unpacked once per node into plain files, memory-mapped,
each sample copying out its own label's rows; shared across processes whatever the start
method; a damaged part refused by name with nothing half-unpacked left behind."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from store_helpers import SHARD, write_table_store

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import STAGES_TEXT, TeacherStore
from clipocr.pipeline.teacher_store.table_flat import CACHE_ENV, FlatPart

LABELS = {SHARD: ["ab", "cat", "ab", "x", "cat", "ab"], "shard-000001": ["x", "dog", "ab"]}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("codec", ["zstd", "int8-channel"])
def test_unpacked_once_mapped_and_shared(tmp_path: Path, cache: Path, monkeypatch,
                                         codec: str) -> None:  # fmt: skip
    by_label, _ = write_table_store(tmp_path / "s", LABELS, codec=codec)
    unpacks = []
    real = FlatPart._unpack
    monkeypatch.setattr(FlatPart, "_unpack", lambda self, tmp: (unpacks.append(1), real(self, tmp)))
    first = TeacherStore(tmp_path / "s")
    first.prepare()
    part = first.text_table().part(0)
    assert all(isinstance(a, np.memmap) for n, a in part.arrays().items() if "chscale" not in n)
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [part.dir.name]  # nothing else
    second = TeacherStore(tmp_path / "s")  # another rank of the node: maps the same files
    got = dict(second.iter_shard(SHARD))
    assert unpacks == [1] and second.text_table().part(0).dir == part.dir
    for feats, label in zip(got.values(), LABELS[SHARD], strict=True):
        assert feats["text_label"] == label
        tol = 0 if codec == "zstd" else 0.02
        for tap in STAGES_TEXT:
            want = _f16(by_label[label][tap][: len(label) + 1])
            np.testing.assert_allclose(feats[tap], want, atol=tol * np.abs(want).max())


def test_a_spawned_worker_gets_no_table_arrays_and_maps_its_own(tmp_path: Path, cache) -> None:
    write_table_store(tmp_path / "s", LABELS)
    store = TeacherStore(tmp_path / "s")
    want = dict(store.iter_shard(SHARD))  # the table is mapped in this process now
    blob = pickle.dumps(store)  # what spawn / forkserver send a DataLoader worker
    assert len(blob) < 20_000 and b"memmap" not in blob
    again = pickle.loads(blob)
    for key, feats in again.iter_shard(SHARD):
        np.testing.assert_array_equal(feats["text_s2"], want[key]["text_s2"])


def test_a_sample_copies_its_own_rows(tmp_path: Path, cache) -> None:
    write_table_store(tmp_path / "s", LABELS, pad="align")
    store = TeacherStore(tmp_path / "s")
    label, rows = store.text_table(all_rows=True).sample(0, 1)
    assert label == "cat" and rows["text_s1"].shape == (6, 8)  # every position
    assert not isinstance(rows["text_s1"], np.memmap) and rows["text_s1"].base is None


def test_a_damaged_part_is_named_and_nothing_is_left_half_unpacked(tmp_path: Path,
                                                                   cache) -> None:  # fmt: skip
    write_table_store(tmp_path / "s", LABELS)
    chunk = tmp_path / "s" / "__text_table" / "part-000000" / "text_s2" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"xyz")  # the CRC32C no longer matches
    with pytest.raises(InputError, match="part-000000/text_s2: chunk at label 0 unreadable"):
        TeacherStore(tmp_path / "s").prepare()
    assert not [p for p in cache.iterdir() if p.is_dir()]
