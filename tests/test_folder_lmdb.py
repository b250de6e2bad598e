"""A labelled folder written as the community STR LMDB, checked with py-lmdb itself (not our
reader), key by key, as PARSeq's create_lmdb_dataset.py lays it out."""

from pathlib import Path

import lmdb
import pytest
from conftest import text_image

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.folder_lmdb import folder_to_lmdb


def _folder(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_bytes(text_image("Straße"))
    (root / "img" / "b.jpg").write_bytes(text_image("ok", fmt="JPEG"))
    (root / "img" / "bad.png").write_bytes(b"\x89PNG not really")
    (root / "labels.tsv").write_text(
        "img/a.png\tStraße\nimg/bad.png\tbroken\nimg/b.jpg\tOK!\nimg/a.png\tStraße\n",
        encoding="utf-8",
    )
    return root


def test_writes_the_community_layout(tmp_path: Path) -> None:
    root = _folder(tmp_path / "mine")
    result = folder_to_lmdb(root, tmp_path / "out", progress=False)
    assert result.num_samples == 2
    assert result.skipped == {"corrupt_image": 1, "duplicate_row": 1}
    env = lmdb.open(str(tmp_path / "out"), readonly=True, lock=False)
    with env.begin() as txn:
        items = dict(txn.cursor())
    env.close()
    assert set(items) == {
        b"num-samples", b"image-000000001", b"label-000000001", b"image-000000002",
        b"label-000000002",
    }  # fmt: skip
    assert items[b"num-samples"] == b"2"
    # Image bytes untouched, labels raw as listed (UTF-8), numbered from 1 in listing order.
    assert items[b"image-000000001"] == (root / "img" / "a.png").read_bytes()
    assert items[b"image-000000002"] == (root / "img" / "b.jpg").read_bytes()
    assert items[b"label-000000001"].decode() == "Straße"
    assert items[b"label-000000002"] == b"OK!"


def test_refuses_an_existing_out_and_a_folder_of_nothing_readable(tmp_path: Path) -> None:
    root = _folder(tmp_path / "mine")
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="taken: already exists"):
        folder_to_lmdb(root, tmp_path / "taken", progress=False)
    (root / "labels.tsv").write_text("img/bad.png\tbroken\n")
    with pytest.raises(InputError, match="no listed image could be read"):
        folder_to_lmdb(root, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "taken"]  # nothing left over
