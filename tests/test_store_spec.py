"""Store spec and manifest: identity checks, what is compared and what is only recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from store_helpers import DIMS, spec

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import TeacherStore, TeacherStoreWriter, shard_group_name


def test_manifest_mismatch_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "s"
    TeacherStoreWriter(root, spec())
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["teacher"]["checksum"] == "abc" and manifest["form"] == "normalised"
    TeacherStoreWriter(root, spec())  # same teacher: fine
    other = spec(teacher={"model": "ViT-B-16", "pretrained": "openai", "checksum": "xyz"})
    other.charset = "62"
    with pytest.raises(InputError, match=r"teacher\.checksum.*charset|charset.*teacher\.checksum"):
        TeacherStoreWriter(root, other)

    store = TeacherStore(root)
    assert store.spec == spec()
    store.check_compatible({"charset": "36", "dims": DIMS, "preprocessing": {"pos_embed": "crop"}})
    with pytest.raises(InputError) as err:
        store.check_compatible(
            {"charset": "36", "form": "raw", "preprocessing": {"image_size": (224, 224)}}
        )
    msg = str(err.value)
    assert "form" in msg and "preprocessing.image_size" in msg and "charset" not in msg


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="manifest.json: missing"):
        TeacherStore(tmp_path)


def test_source_is_recorded_never_compared(tmp_path: Path) -> None:
    """Two paths to one teacher (or a copy of its files) are the same store; the first is kept."""
    root = tmp_path / "s"
    TeacherStoreWriter(root, spec(source={"model": "/a/teacher.json", "pretrained": "/a/w.pt"}))
    again = spec(source={"model": "/copy/teacher.json", "pretrained": "/copy/w.pt"})
    TeacherStoreWriter(root, again)  # not refused
    store = TeacherStore(root)
    assert store.manifest["source"]["model"] == "/a/teacher.json"
    assert "source" not in again.identity() and again.identity() == spec().identity()
    with pytest.raises(InputError, match=r"teacher\.checksum"):
        TeacherStoreWriter(root, spec(teacher={"model": "ViT-B-16", "checksum": "xyz"}))


def test_manifest_without_source_still_reads(tmp_path: Path) -> None:
    """Stores written before ``source`` existed open as before (it defaults to empty)."""
    root = tmp_path / "s"
    TeacherStoreWriter(root, spec())
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["source"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert TeacherStore(root).spec == spec()
    TeacherStoreWriter(root, spec(source={"model": "x"}))


def test_spec_validation() -> None:
    with pytest.raises(InputError, match="codec"):
        spec(codec="lz4")
    with pytest.raises(InputError, match="missing emb"):
        spec(dims={"image_tokens": 3, "image": 16, "text": 8})


def test_shard_group_name() -> None:
    assert shard_group_name("/data/shards/shard-000042.tar") == "shard-000042"
    assert shard_group_name("shard-000001") == "shard-000001"
