from pathlib import Path

import lmdb
import pytest
from conftest import text_image, write_lmdb

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import (
    SKIP_CORRUPT_IMAGE,
    SKIP_LABEL_NOT_UTF8,
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


def _put_label(path: Path, index: int, raw: bytes) -> None:
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(b"label-%09d" % index, raw)
    env.close()


def test_non_utf8_label_is_skipped_and_counted_never_replaced(tmp_path: Path) -> None:
    """``a\\xffb`` used to become ``a\\ufffdb`` (then "ab" once filtered): a training label
    nobody wrote. Training skips and counts it; evaluation gets no label (counted as
    unlabelled there), never the replaced string."""
    path = write_lmdb(tmp_path / "db", [(text_image("ok"), "ok"), (text_image("ab"), "ab")])
    _put_label(path, 2, b"a\xffb")
    reader = LmdbReader(path)
    assert [label for _, _, label in reader] == ["ok"]
    assert reader.skipped == {SKIP_LABEL_NOT_UTF8: 1}
    reader.close()
    assert [label for _, _, label in LmdbReader(path).iter_raw(skip_bad=False)] == ["ok", None]


@pytest.mark.parametrize("keep", [0.5, 2 / 10, 5000 / 40960])
def test_truncated_data_mdb_is_refused_on_open(tmp_path: Path, keep: float) -> None:
    """Reading a page past the end of a memory-mapped ``data.mdb`` killed the process with
    SIGBUS (exit 135, no message) in prepare and clipocr-eval; the size is checked first."""
    path = write_lmdb(tmp_path / "db", [(text_image(f"w{i}"), f"w{i}") for i in range(40)])
    data = path / "data.mdb"
    whole = data.read_bytes()
    data.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(InputError, match=rf"data.mdb: truncated \(\d+ of {len(whole)} bytes") as e:
        LmdbReader(path)
    assert "\n" not in str(e.value)
    data.write_bytes(whole)  # a refused environment is closed: this process can open it again
    assert len(LmdbReader(path)) == 40


def test_damaged_page_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """A zeroed B-tree page raised lmdb.CorruptedError (a traceback) from wherever it was met."""
    path = write_lmdb(tmp_path / "db", [(text_image(f"w{i}"), f"w{i}") for i in range(40)])
    env = lmdb.open(str(path), readonly=True, lock=False)
    psize = env.stat()["psize"]
    env.close()
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[2 * psize : 3 * psize] = bytes(psize)  # the first page after the two meta pages
    data.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"db: LMDB corrupted at key \w+-\d+ \(.*MDB_CORRUPTED"):
        list(LmdbReader(path).iter_raw())


def _set_count(path: Path, raw: bytes) -> None:
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(b"num-samples", raw)
    env.close()


@pytest.mark.parametrize(
    ("count", "message"),
    [(b"-5", r"'num-samples' is -5, but the LMDB holds 21 keys \(≈ 10 samples\)"),
     (b"1000000000", r"'num-samples' is 1000000000, but the LMDB holds 21 keys"),
     (b"0", r"'num-samples' is 0, but the LMDB holds 20 other keys")],
)  # fmt: skip
def test_impossible_sample_counts_are_refused(tmp_path: Path, count: bytes, message: str) -> None:
    """Issue 23: ``num-samples`` −5 over 10 records was evaluated as 0 samples, exit 0; a huge
    count would be read as hours of "missing" records. Both are a wrong header: one line."""
    path = write_lmdb(tmp_path / "db", [(text_image(f"w{i}"), f"w{i}") for i in range(10)])
    _set_count(path, count)
    with pytest.raises(InputError, match=message) as err:
        LmdbReader(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_few_missing_records_are_still_skipped_not_refused(tmp_path: Path) -> None:
    path = write_lmdb(tmp_path / "db", [(text_image(f"w{i}"), f"w{i}") for i in range(10)])
    _set_count(path, b"12")  # two records lost: counted as missing, as before
    reader = LmdbReader(path)
    assert len(list(reader)) == 10 and reader.skipped == {SKIP_MISSING_LABEL: 2}
    assert len(LmdbReader(write_lmdb(tmp_path / "empty", []))) == 0  # an empty LMDB is fine
