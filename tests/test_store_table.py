"""The label-keyed text table: one row per distinct label, per-sample references, parts added by
later runs, the align pad mode, and format-1 (ragged) stores still read or clearly refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from store_helpers import (
    POSITIONS,
    SHARD,
    spec,
    table_feats,
    write_shard,
    write_table_store,
)

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import (
    STAGES_TEXT,
    TeacherStore,
    TeacherStoreWriter,
    open_table_part,
)

LABELS = {"shard-000000": ["ab", "cat", "ab", "x", "cat", "ab"], "shard-000001": ["x", "dog", "ab"]}


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def test_text_is_stored_once_per_label_and_read_per_sample(tmp_path: Path) -> None:
    root = tmp_path / "s"
    by_label, images = write_table_store(root, LABELS)
    part = zarr.open_group(str(root / "__text_table" / "part-000000"), mode="r")
    assert sorted(part["labels"][:].tolist()) == ["ab", "cat", "dog", "x"]  # dedup across shards
    assert part["text_s1"].shape == (4, POSITIONS, 8)
    group = zarr.open_group(str(root / SHARD), mode="r")
    assert "text_ref" in group and not any(t in group for t in STAGES_TEXT + ("text_emb",))
    store = TeacherStore(root)
    assert store.shards() == {"shard-000000": 6, "shard-000001": 3}
    for shard, labels in LABELS.items():
        got = list(store.iter_shard(shard))
        assert [k for k, _ in got] == [f"{shard}/{i:06d}" for i in range(len(labels))]
        for (key, feats), label in zip(got, labels, strict=True):
            assert str(feats["text_label"]) == label
            want = by_label[label]
            for tap in STAGES_TEXT:  # masked: the label's L + 1 rows
                np.testing.assert_array_equal(feats[tap], _f16(want[tap][: len(label) + 1]))
            np.testing.assert_array_equal(feats["text_emb"], _f16(want["text_emb"]))
            np.testing.assert_array_equal(feats["image_s2"], _f16(images[key]["image_s2"]))
    report = store.verify()
    assert report["ok"], report["problems"]
    assert report["text_table"]["labels"] == 4


def test_a_later_run_adds_a_part_and_the_reader_unions_them(tmp_path: Path) -> None:
    root = tmp_path / "s"
    by_label, _ = write_table_store(root, {"shard-000000": ["ab", "cat"]})
    writer = TeacherStoreWriter(root, spec(text_layout="table"), chunk_samples=4)
    new = ["cat", "zebra"]  # "cat" again: the first part's row is the one referenced
    feats = table_feats(np.random.default_rng(5), new)
    with open_table_part(writer, POSITIONS, len(new)) as part:
        part.append(new, feats)
        assert part.commit() == 1
    index = writer.text_index(refresh=True)  # extended by the new part: "cat" keeps (0, 1)
    assert index.as_dict() == {"ab": (0, 0), "cat": (0, 1), "zebra": (1, 1)}
    keys = ["shard-000001/000000", "shard-000001/000001"]
    img = {f"image_s{i}": np.zeros((2, 3, 16), np.float32) for i in (1, 2, 3)}
    with writer.open_shard("shard-000001", labels=dict(zip(keys, ["zebra", "cat"]))) as g:
        g.append(keys, img)
        g.commit()
    got = dict(TeacherStore(root).iter_shard("shard-000001"))
    np.testing.assert_array_equal(got[keys[0]]["text_s1"], _f16(feats["text_s1"][1][:6]))
    np.testing.assert_array_equal(got[keys[1]]["text_s3"], _f16(by_label["cat"]["text_s3"][:4]))
    assert TeacherStore(root).verify()["ok"]


def test_a_label_missing_from_the_table_is_refused_by_the_writer(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_table_store(root, {"shard-000000": ["ab"]})
    writer = TeacherStoreWriter(root, spec(text_layout="table"))
    img = {f"image_s{i}": np.zeros((1, 3, 16), np.float32) for i in (1, 2, 3)}
    with pytest.raises(InputError, match="'nope' of shard-000001/000000 is not in the store's"):
        with writer.open_shard("shard-000001", labels={"shard-000001/000000": "nope"}) as g:
            g.append(["shard-000001/000000"], img)
    with pytest.raises(ValueError, match="no label given for sample shard-000002/000000"):
        with writer.open_shard("shard-000002") as g:
            g.append(["shard-000002/000000"], img)


def test_align_reads_every_position_and_needs_an_align_store(tmp_path: Path) -> None:
    by_label, _ = write_table_store(tmp_path / "a", LABELS, pad="align")
    store = TeacherStore(tmp_path / "a")
    assert store.manifest["text_pad"] == "align" and store.manifest["text_layout"] == "table"
    for (_, feats), label in zip(store.iter_shard(SHARD, "align"), LABELS[SHARD], strict=True):
        assert feats["text_s2"].shape == (POSITIONS, 8)  # c1..cL, EOT and the pad positions
        np.testing.assert_array_equal(feats["text_s2"], _f16(by_label[label]["text_s2"]))
        assert np.abs(feats["text_s2"][len(label) + 1 :]).sum() > 0  # pad features, not zeros
    masked = dict(store.iter_shard(SHARD))  # an align store also reads masked
    assert masked[f"{SHARD}/000001"]["text_s1"].shape == (4, 8)
    write_table_store(tmp_path / "m", LABELS)
    with pytest.raises(InputError, match="re-cache with `clipocr cache-teacher --text-pad align`"):
        next(TeacherStore(tmp_path / "m").iter_shard(SHARD, "align"))
    with pytest.raises(InputError, match="needs the text table"):
        spec(text_layout="ragged", text_pad="align")


def test_verify_finds_a_reference_past_the_table(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_table_store(root, LABELS)
    refs = zarr.open_array(str(root / SHARD / "text_ref"), mode="r+")
    refs[2] = [0, 99]
    report = TeacherStore(root).verify()
    assert not report["ok"]
    assert any("text_ref: references rows absent" in p for p in report["problems"])
    with pytest.raises(InputError, match="past the end of table part 0"):
        list(TeacherStore(root).iter_shard(SHARD))


def _as_format_1(root: Path) -> None:
    """Rewrite a ragged store's manifest as clipocr wrote it before the text table existed."""
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["format"] = "clipocr-teacher-store/1"
    del manifest["text_layout"], manifest["text_pad"]
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_format_1_ragged_stores_still_read_and_writers_refuse_them(tmp_path: Path) -> None:
    root = tmp_path / "old"
    batches = write_shard(root, spec(), [5])
    _as_format_1(root)
    store = TeacherStore(root)
    assert store.spec.text_layout == "ragged" and store.spec.text_pad == "masked"
    got = dict(store.iter_shard(SHARD))
    keys, feats = batches[0]
    n = feats["text_lengths"][3]
    np.testing.assert_array_equal(got[keys[3]]["text_s2"], _f16(feats["text_s2"][3, :n]))
    assert store.verify()["ok"]
    with pytest.raises(InputError, match="format 1.*training still reads it.*another --out"):
        TeacherStoreWriter(root, spec())
    with pytest.raises(InputError, match="text pad align needs the pad-token features"):
        next(store.iter_shard(SHARD, "align"))
