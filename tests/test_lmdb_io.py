from pathlib import Path

import lmdb
import pytest
from conftest import text_image, write_lmdb

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import (
    SKIP_CORRUPT_IMAGE,
    SKIP_MISSING_LABEL,
    LmdbReader,
    LmdbWriter,
)


def test_round_trip(small_lmdb: Path) -> None:
    reader = LmdbReader(small_lmdb)
    assert len(reader) == 8
    items = list(reader)
    assert [i for i, _, _ in items] == list(range(1, 9))
    assert items[1][2] == "World"
    assert items[0][1].mode == "RGB" and items[0][1].size == (100, 32)
    assert not reader.skipped


def test_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "db"
    with pytest.raises(RuntimeError), LmdbWriter(target) as writer:
        writer.add(text_image("a"), "a")
        raise RuntimeError("crash")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_missing_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    path = write_lmdb(
        tmp_path / "db", [(text_image("ok"), "ok"), (b"garbage", "bad"), (text_image("x"), "x")]
    )
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.delete(b"label-000000003")
    env.close()
    reader = LmdbReader(path)
    got = list(reader)
    assert [label for _, _, label in got] == ["ok"]
    assert reader.skipped == {SKIP_CORRUPT_IMAGE: 1, SKIP_MISSING_LABEL: 1}
    assert f"{path}: sample 2 skipped" in caplog.text


def test_raw_iteration_keeps_bad_records_when_asked(tmp_path: Path) -> None:
    path = write_lmdb(tmp_path / "db", [(b"garbage", "bad")])
    assert list(LmdbReader(path).iter_raw(skip_bad=False)) == [(1, b"garbage", "bad")]


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such LMDB"):
        LmdbReader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not an LMDB"):
        LmdbReader(tmp_path / "empty")
    env = lmdb.open(str(tmp_path / "nocount"))
    with env.begin(write=True) as txn:
        txn.put(b"image-000000001", b"x")
    env.close()
    with pytest.raises(InputError, match="no 'num-samples'"):
        LmdbReader(tmp_path / "nocount")
