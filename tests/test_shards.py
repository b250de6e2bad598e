import errno
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
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
    assert index.num_samples == 12
    assert [s.count for s in index.shards] == [5, 5, 2]
    assert index.skipped == {"corrupt_image": 1, "label_empty": 1, "label_too_long": 1}
    assert json.loads((tmp_path / "shards" / "shards.json").read_text()) == index.to_json()
    # provenance: shard 1 holds LMDB records 6..10, the last shard 11 and the JPEG at 14
    assert index.shards[1].sources == {str(db): [6, 10]}
    assert index.shards[2].sources == {str(db): [11, 14]}

    reader = ShardReader(tmp_path / "shards")
    got = list(reader)
    assert [label for _, _, label in got] == _words(11) + ["jpeg"]
    assert got[0][0] == "shard-000000/000000" and got[7][0] == "shard-000001/000002"
    assert all(img.shape == (3, 32, 128) and img.dtype == torch.uint8 for _, img, _ in got)
    # original bytes are kept (no re-encode) for both PNG and JPEG
    raw = list(iter_shard_raw(tmp_path / "shards" / "shard-000002.tar"))
    assert raw[0][1] == text_image("w10") and raw[1][1] == jpeg


def test_long_label_is_skipped_before_charset_filtering(tmp_path: Path) -> None:
    """PARSeq's order: 27 characters (3 of them punctuation) are too long, although the 24
    letters left by the 36-symbol filter would fit; the skip is counted by its reason."""
    long = "abcdefgh.ijklmnop-qrstuvwx!"
    db = write_lmdb(tmp_path / "db", [(text_image("ok"), "ok"), (text_image("long"), long)])
    index = prepare_shards([db], tmp_path / "shards", CS, progress=False)
    assert index.num_samples == 1 and index.skipped == {"label_too_long": 1}
    assert json.loads((tmp_path / "shards" / "shards.json").read_text())["skipped"] == {
        "label_too_long": 1
    }
    assert [lab for _, _, lab in ShardReader(tmp_path / "shards")] == ["ok"]


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
    assert index.num_samples == 12
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


def _crash_after(monkeypatch, accepted: int) -> None:
    """Make the next prepare stop (as if killed) once `accepted` samples have been taken."""
    real = shards_mod._accepted

    def crashing(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == accepted:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(shards_mod, "_accepted", crashing)


def _members(path: Path) -> int:
    with tarfile.open(path) as tar:
        return len([m for m in tar.getmembers() if m.name.endswith(".txt")])


@pytest.mark.parametrize(("first", "then", "crash_at"), [(4, 5, 9), (4, 3, 9), (4, 8, 5)])
def test_resume_with_another_shard_size_is_refused(
    tmp_path: Path, monkeypatch, first: int, then: int, crash_at: int
) -> None:
    """Resuming with another --shard-size used to skip ``done × new size`` samples: duplicated
    (or lost) samples and counts that disagree with the tars, exit 0. (4 → 8 after one finished
    shard is known to be wrong only when the sources run past that shard's 4 samples.)"""
    words = _words(12)
    db = write_lmdb(tmp_path / "db", [(text_image(w), w) for w in words])
    out = tmp_path / "shards"
    _crash_after(monkeypatch, crash_at)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards([db], out, CS, shard_size=first, progress=False)
    monkeypatch.undo()
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(InputError, match=rf"--shard-size {first} .*not {then};") as err:
        prepare_shards([db], out, CS, shard_size=then, progress=False)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written or removed
    index = prepare_shards([db], out, CS, shard_size=first, progress=False)
    assert [lab for _, _, lab in ShardReader(out)] == words
    assert [s.count for s in index.shards] == [_members(out / s.name) for s in index.shards]


def test_rerun_without_index_adds_no_empty_shard(tmp_path: Path) -> None:
    """All shards finished, ``shards.json`` lost: the rerun writes the index alone (an empty
    extra ``shard-000003.tar`` appeared before), and a single short shard is consistent with
    any larger --shard-size."""
    db = write_lmdb(tmp_path / "db", [(text_image(w), w) for w in _words(10)])
    out = tmp_path / "shards"
    index = prepare_shards([db], out, CS, shard_size=4, progress=False)
    (out / "shards.json").unlink()
    again = prepare_shards([db], out, CS, shard_size=4, progress=False)
    assert again == index
    assert sorted(p.name for p in out.iterdir()) == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shards.json"
    ]  # fmt: skip

    small = write_lmdb(tmp_path / "small", [(text_image(w), w) for w in _words(3)])
    prepare_shards([small], tmp_path / "one", CS, shard_size=4, progress=False)
    (tmp_path / "one" / "shards.json").unlink()
    one = prepare_shards([small], tmp_path / "one", CS, shard_size=8, progress=False)
    assert [s.count for s in one.shards] == [3]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "shard-000000.tar",
        "shards.json",
    ]


def test_finished_shards_beyond_the_sources_are_refused(tmp_path: Path) -> None:
    db = write_lmdb(tmp_path / "db", [(text_image(w), w) for w in _words(8)])
    out = tmp_path / "shards"
    prepare_shards([db], out, CS, shard_size=4, progress=False)
    (out / "shards.json").unlink()
    fewer = write_lmdb(tmp_path / "fewer", [(text_image(w), w) for w in _words(4)])
    with pytest.raises(InputError, match="holds 2 finished shards but these sources fill 1"):
        prepare_shards([fewer], out, CS, shard_size=4, progress=False)
    assert not (out / "shards.json").exists()


def test_shard_size_must_be_positive(tmp_path: Path, small_lmdb: Path) -> None:
    with pytest.raises(InputError, match="--shard-size 0: must be at least 1"):
        prepare_shards([small_lmdb], tmp_path / "s", CS, shard_size=0, progress=False)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_shards(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC in the middle of the second shard: one line, only the finished shard visible (no
    temp file, no index), and the same command resumes once there is space."""
    words = _words(12)
    db = write_lmdb(tmp_path / "db", [(text_image(w), w) for w in words])
    out = tmp_path / "shards"
    real_write = wds.TarWriter.write
    calls = []

    def filling(self, obj):
        calls.append(obj["__key__"])
        if len(calls) == 6:
            _disk_full()
        return real_write(self, obj)

    monkeypatch.setattr(wds.TarWriter, "write", filling)
    with pytest.raises(InputError, match=r"disk full .*No space left on device.*resume") as err:
        prepare_shards([db], out, CS, shard_size=4, progress=False)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar"]
    monkeypatch.undo()
    prepare_shards([db], out, CS, shard_size=4, progress=False)
    assert [lab for _, _, lab in ShardReader(out)] == words


def test_disk_full_while_writing_the_index(tmp_path: Path, monkeypatch, small_lmdb: Path) -> None:
    out = tmp_path / "shards"
    monkeypatch.setattr(Path, "write_text", _disk_full)
    with pytest.raises(InputError, match="disk full"):
        prepare_shards([small_lmdb], out, CS, shard_size=4, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    monkeypatch.undo()
    index = prepare_shards([small_lmdb], out, CS, shard_size=4, progress=False)
    assert index.num_samples == 8 and len(list(out.iterdir())) == 3


def _tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            info.mtime = 1.5 if fmt == tarfile.PAX_FORMAT else 0  # a float mtime → pax header
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _wds(path: Path) -> list[tuple[str, bytes, str]]:
    """What webdataset reads from `path` (the reference the stream reader must match)."""
    dataset = wds.WebDataset(
        str(path), shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None
    )
    return [(s["__key__"], s.get("jpg") or s.get("png"), s["txt"].decode()) for s in dataset]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_stream_reader_reads_what_webdataset_reads(tmp_path: Path, fmt: int) -> None:
    """Plain ustar (as `prepare` writes), pax headers and GNU long names (other writers), long
    keys, directories and metadata members: the same samples as webdataset, in order."""
    jpeg = text_image("two", fmt="JPEG")
    deep = "d" * 90 + "/" + "k" * 80  # over ustar's 100-character name field
    members = [("dir/", b""), ("__meta__", b"x"), ("s/000000.png", text_image("one")),
               ("s/000000.txt", b"one"), ("s/000001.JPG", jpeg), ("s/000001.txt", b"two"),
               (f"{deep}.png", text_image("three")), (f"{deep}.txt", "thrée".encode())]  # fmt: skip
    if fmt == tarfile.USTAR_FORMAT:
        members = [(n.replace(deep, "s/000002"), d) for n, d in members]
    path = _tar(tmp_path / "s.tar", members, fmt)
    got = list(iter_shard_raw(path))
    assert got == _wds(path) and [lab for _, _, lab in got] == ["one", "two", "thrée"]
    assert got[1] == ("s/000001", jpeg, "two")


def test_stream_reader_refuses_damaged_tars_with_one_line(tmp_path: Path) -> None:
    whole = _tar(tmp_path / "s.tar", [("a/0.png", text_image("one") * 3), ("a/0.txt", b"one")])
    data = whole.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:700])
    with pytest.raises(InputError, match=r"cut.tar: truncated at byte 0 \(member holds 188 of"):
        list(iter_shard_raw(tmp_path / "cut.tar"))
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(InputError, match="junk.tar: not a valid tar at byte 0"):
        list(iter_shard_raw(tmp_path / "junk.tar"))
    flipped = bytearray(data)
    flipped[512 * ((len(text_image("one") * 3) + 511) // 512 + 1) + 3] ^= 0xFF  # 2nd header
    (tmp_path / "flip.tar").write_bytes(bytes(flipped))
    with pytest.raises(InputError, match="flip.tar: not a valid tar at byte .*checksum"):
        list(iter_shard_raw(tmp_path / "flip.tar"))
    unlabelled = _tar(tmp_path / "nolabel.tar", [("a/0.png", text_image("one"))])
    with pytest.raises(InputError, match="sample a/0 has no label"):
        list(iter_shard_raw(unlabelled))


def test_stream_reader_yields_samples_before_reading_the_rest(tmp_path: Path) -> None:
    """Streaming: samples come out as the tar is read, so a shard cut short yields its first
    samples before the error (a reader that takes the whole file first would yield none)."""
    db = write_lmdb(tmp_path / "db", [(text_image(w), w) for w in _words(50)])
    prepare_shards([db], tmp_path / "shards", CS, shard_size=50, progress=False)
    data = (tmp_path / "shards" / "shard-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    samples = iter_shard_raw(tmp_path / "cut.tar")
    assert [next(samples)[2] for _ in range(3)] == ["w0", "w1", "w2"]
    with pytest.raises(InputError, match="cut.tar: (truncated|not a valid tar)"):
        list(samples)
