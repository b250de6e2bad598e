import json
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import text_image, write_lmdb

from clipocr.pipeline import shards as shards_mod
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.shards import ShardReader, iter_shard_raw, prepare_shards

CS = Charset.from_name("36")


def _words(n: int) -> list[str]:
    return [f"w{i}" for i in range(n)]


def test_lmdb_to_shards_round_trip(tmp_path: Path) -> None:
    words = _words(11) + ["!!!", "a" * 30]  # two rejected labels
    jpeg = text_image("jpeg", fmt="JPEG")
    samples = [(text_image(w), w) for w in words] + [(jpeg, "Jpeg"), (b"garbage", "junk")]
    db = write_lmdb(tmp_path / "db", samples)
    index = prepare_shards([db], tmp_path / "shards", CS, shard_size=5, progress=False)
    assert index["num_samples"] == 12
    assert [s["count"] for s in index["shards"]] == [5, 5, 2]
    assert index["skipped"] == {"corrupt_image": 1, "label_empty": 1, "label_too_long": 1}
    assert json.loads((tmp_path / "shards" / "shards.json").read_text()) == index
    # provenance: shard 1 holds LMDB records 6..10, the last shard 11 and the JPEG at 14
    assert index["shards"][1]["sources"] == {str(db): [6, 10]}
    assert index["shards"][2]["sources"] == {str(db): [11, 14]}

    reader = ShardReader(tmp_path / "shards")
    got = list(reader)
    assert [label for _, _, label in got] == _words(11) + ["jpeg"]
    assert got[0][0] == "shard-000000/000000" and got[7][0] == "shard-000001/000002"
    assert all(img.shape == (3, 32, 128) and img.dtype == torch.uint8 for _, img, _ in got)
    # original bytes are kept (no re-encode) for both PNG and JPEG
    raw = list(iter_shard_raw(tmp_path / "shards" / "shard-000002.tar"))
    assert raw[0][1] == text_image("w10") and raw[1][1] == jpeg


def test_image_folder_source(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    (root / "img").mkdir(parents=True)
    for i, w in enumerate(["Alpha", "Beta"]):
        (root / "img" / f"{i}.png").write_bytes(text_image(w))
    (root / "labels.tsv").write_text("img/0.png\tAlpha\n\nimg/1.png\tBeta\nimg/missing.png\tGone\n")
    index = prepare_shards([root], tmp_path / "shards", CS, progress=False)
    assert index["num_samples"] == 2 and index["skipped"] == {"missing_image": 1}
    assert [lab for _, _, lab in ShardReader(tmp_path / "shards")] == ["alpha", "beta"]


def test_malformed_labels_file(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    root.mkdir()
    (root / "labels.tsv").write_text("a.png\tA\nno-tab-here\n")
    with pytest.raises(InputError, match=r"labels.tsv:2: malformed line"):
        prepare_shards([root], tmp_path / "shards", CS, progress=False)
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_bad_sources(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    if kind == "empty":
        src.mkdir()
    with pytest.raises(InputError, match=str(src)):
        prepare_shards([src], tmp_path / "out", CS, progress=False)


def test_resume_after_crash(tmp_path: Path, monkeypatch) -> None:
    words = _words(12)
    db = write_lmdb(tmp_path / "db", [(text_image(w), w) for w in words])
    out = tmp_path / "shards"

    real_accepted = shards_mod._accepted

    def crashing(*args, **kwargs):
        for i, item in enumerate(real_accepted(*args, **kwargs)):
            if i == 9:  # inside the second shard
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(shards_mod, "_accepted", crashing)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards([db], out, CS, shard_size=4, progress=False)
    # only complete shards are visible; no index, no temp files
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    first = (out / "shard-000000.tar").stat().st_mtime_ns

    monkeypatch.setattr(shards_mod, "_accepted", real_accepted)
    index = prepare_shards([db], out, CS, shard_size=4, progress=False)
    assert index["num_samples"] == 12
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first  # kept, not rewritten
    assert [lab for _, _, lab in ShardReader(out)] == words  # no duplicates, nothing lost
    with tarfile.open(out / "shard-000002.tar") as tar:
        assert len([m for m in tar.getmembers() if m.name.endswith(".txt")]) == 4


def test_prepare_refuses_existing_output(tmp_path: Path, small_lmdb: Path) -> None:
    prepare_shards([small_lmdb], tmp_path / "s", CS, progress=False)
    with pytest.raises(InputError, match="already prepared"):
        prepare_shards([small_lmdb], tmp_path / "s", CS, progress=False)


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such shard folder"):
        ShardReader(tmp_path / "none")
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="shards.json: missing"):
        ShardReader(tmp_path / "x")
