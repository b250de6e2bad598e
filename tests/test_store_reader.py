"""Store reader: exact round trips, chunked streaming, and what `verify` finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from store_helpers import SHARD, batch, expected_samples, spec, write_shard

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import (
    TeacherStore,
    TeacherStoreWriter,
    format_verify_report,
    shard_digest,
)


def test_lossless_round_trip_is_exact_float16(tmp_path: Path) -> None:
    # batches straddle chunk boundaries (chunk 4 samples, 32 text rows) and include an empty one
    batches = write_shard(tmp_path / "s", spec(), [3, 5, 0, 7, 1])
    store = TeacherStore(tmp_path / "s")
    assert store.shards() == {SHARD: 16}
    got = list(store.iter_shard(SHARD))
    want = expected_samples(batches)
    assert [k for k, _ in got] == [k for k, _ in want]
    for (_, g), (_, w) in zip(got, want, strict=True):
        assert set(g) == set(w)
        for tap in w:
            assert g[tap].dtype == np.float32
            np.testing.assert_array_equal(g[tap], w[tap].astype(np.float16).astype(np.float32))
    # the ragged layout on disk: offsets are the cumulative valid lengths
    group = zarr.open_group(str(tmp_path / "s" / SHARD), mode="r")
    lengths = np.concatenate([f["text_lengths"] for _, f in batches])
    np.testing.assert_array_equal(group["text_offsets"][:], np.r_[0, np.cumsum(lengths)])
    assert group["text_s1"].shape == (lengths.sum(), 8) and group["image_s1"].dtype == np.float16


def test_chunked_blocks_match_per_sample(tmp_path: Path) -> None:
    write_shard(tmp_path / "s", spec(), [6, 6])
    store = TeacherStore(tmp_path / "s")
    blocks = list(store.iter_chunks(SHARD))
    assert [len(k) for k, _ in blocks] == [4, 4, 4]
    samples = dict(store.iter_shard(SHARD))
    keys, block = blocks[1]
    off = block["text_offsets"]
    assert off[0] == 0 and len(off) == 5
    np.testing.assert_array_equal(block["text_s2"][off[2] : off[3]], samples[keys[2]]["text_s2"])
    np.testing.assert_array_equal(block["image_s3"][3], samples[keys[3]]["image_s3"])


@pytest.mark.parametrize("codec", ["zstd", "int8-token"])
def test_verify_finds_nan_and_count_mismatch(tmp_path: Path, codec: str) -> None:
    root = tmp_path / "s"
    rng = np.random.default_rng(0)
    writer = TeacherStoreWriter(root, spec(codec=codec), chunk_samples=4)
    with writer.open_shard(SHARD) as group:
        keys, feats = batch(rng, 0, 6)
        feats["text_s2"][4, 0, 3] = np.nan
        group.append(keys, feats)
        group.commit(missing=[f"{SHARD}/000006"])
    store = TeacherStore(root)
    index = {"charset": "36", "shards": [{"name": f"{SHARD}.tar", "count": 8}]}
    report = store.verify(index)
    assert not report["ok"]
    probs = report["shards"][SHARD]["problems"]
    assert any("count 6 + 1 missing != 8" in p for p in probs)
    assert any(p.startswith("text_s2:") and "NaN" in p for p in probs)
    assert "FAILED" in format_verify_report(report)


def test_verify_ok_and_bytes_per_sample(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_shard(root, spec(), [5, 4], missing=[f"{SHARD}/000009"])
    store = TeacherStore(root)
    assert store.missing(SHARD) == [f"{SHARD}/000009"]
    report = store.verify({"charset": "36", "shards": [{"name": f"{SHARD}.tar", "count": 10}]})
    assert report["ok"], report["problems"]
    assert report["num_samples"] == 9
    assert report["bytes_per_sample"] == pytest.approx(store.nbytes(SHARD) / 9)
    # f16 payload of one sample is (3*3*16 + ~3.5*3*8 + 8) * 2 bytes; compression cannot beat half
    assert 200 < report["bytes_per_sample"] < 2000
    # a listed shard absent from the store, and a charset that differs, are problems
    bad = {
        "charset": "62",
        "shards": [{"name": f"{SHARD}.tar", "count": 10}, {"name": "x.tar", "count": 1}],
    }
    probs = store.verify(bad)["problems"]
    assert any("charset" in p for p in probs) and any(p.startswith("x:") for p in probs)


def test_verify_detects_keys_out_of_line(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_shard(root, spec(), [4])
    group = zarr.open_group(str(root / SHARD), mode="a")
    group["keys"][1] = f"{SHARD}/000000"  # a duplicated key
    group.attrs["count"] = 5
    probs = TeacherStore(root).verify()["shards"][SHARD]["problems"]
    assert any("keys: 4 stored, count says 5" in p for p in probs)
    assert any("duplicates" in p for p in probs)


def _flip(path: Path, at: int, n: int = 4) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, at + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_chunk_are_caught(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_shard(root, spec(), [12])
    chunk = root / SHARD / "image_s1" / "c" / "1" / "0" / "0"
    _flip(chunk, len(chunk.read_bytes()) // 2)  # inside the compressed payload
    store = TeacherStore(root)
    probs = store.verify()["problems"]
    assert any(p.startswith(f"{SHARD}: unreadable") and "checksum" in p for p in probs), probs
    with pytest.raises(InputError, match=rf"{SHARD}/image_s1: chunk 1 unreadable.*checksum"):
        list(store.iter_shard(SHARD))


@pytest.mark.parametrize("array", ["image_s3", "text_s1", "keys"])
def test_deleted_chunk_is_an_error_not_zeros(tmp_path: Path, array: str) -> None:
    root = tmp_path / "s"
    write_shard(root, spec(), [12])
    chunks = sorted((root / SHARD / array / "c").rglob("*"))
    next(p for p in chunks if p.is_file()).unlink()
    store = TeacherStore(root)
    report = store.verify()
    assert not report["ok"]
    assert any(f"{array}: " in p and "chunk files stored" in p for p in report["problems"])
    with pytest.raises(InputError, match=rf"{SHARD}: teacher group does not hold .*: {array}: "):
        next(store.iter_chunks(SHARD))


def test_store_without_checksums_stays_readable(tmp_path: Path, monkeypatch) -> None:
    from clipocr.pipeline.teacher_store import group_writer

    monkeypatch.setattr(group_writer, "checksummed", lambda *comp: comp)  # as older versions wrote
    root = tmp_path / "s"
    batches = write_shard(root, spec(), [6])
    store = TeacherStore(root)
    report = store.verify()
    assert report["ok"] and report["unchecksummed"] == [SHARD]
    assert "no chunk checksums recorded in 1 group" in format_verify_report(report)
    assert len(list(store.iter_shard(SHARD))) == len(expected_samples(batches))


def test_check_sources_and_verify_compare_the_source_shards(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    tar = shards / f"{SHARD}.tar"
    tar.write_bytes(bytes(range(256)) * 600)  # bigger than the two sampled ends
    root = tmp_path / "s"
    rng = np.random.default_rng(0)
    with TeacherStoreWriter(root, spec()).open_shard(SHARD) as group:
        group.append(*batch(rng, 0, 3))
        group.commit(source=shard_digest(tar))
    store = TeacherStore(root)
    index = {"charset": "36", "shards": [{"name": tar.name, "count": 3}]}
    assert store.check_sources(shards) == [] and store.verify(index, shards)["ok"]
    # the same size, other bytes in the middle: only the full digest sees it
    _flip(tar, 300 * 256)
    assert store.check_sources(shards) == []
    with pytest.raises(InputError, match="other shards"):
        store.check_sources(shards, thorough=True)
    probs = store.verify(index, shards)["problems"]
    assert any("cached from another source shard" in p and "SHA-256" in p for p in probs)
    _flip(tar, 10)  # other images at the start
    with pytest.raises(InputError, match="content differs"):
        store.check_sources(shards)


def test_store_without_source_digests_is_noted_not_failed(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_shard(root, spec(), [3])  # committed without a source digest, as older versions did
    (tmp_path / f"{SHARD}.tar").write_bytes(b"x" * 100)
    store = TeacherStore(root)
    assert store.check_sources(tmp_path) == [SHARD]
    report = store.verify(None, tmp_path)
    assert report["ok"] and report["unsourced"] == [SHARD]
    assert "no source digests recorded" in format_verify_report(report)


@pytest.mark.parametrize("codec", ["zstd", "int8-channel"])
def test_open_samples_gives_compact_copies_and_skips_without_reading(
    tmp_path: Path, codec: str, monkeypatch
) -> None:
    """The trainer's path: each sample its own rows in the stored dtype (no view keeping a
    decoded chunk alive), and a skip over whole chunks reads none of them (a resumed run)."""
    from clipocr.pipeline.teacher_store.streams import ChunkStream, Encoded, decode_rows

    write_shard(tmp_path / "s", spec(codec=codec), [6, 6, 4], chunk=4)
    store = TeacherStore(tmp_path / "s")
    want = dict(store.iter_shard(SHARD))
    samples = store.open_samples(SHARD)
    key, first = samples.take()
    value = first["image_s1"]
    data = value.data if isinstance(value, Encoded) else value
    assert data.dtype == (np.int8 if codec.startswith("int") else np.float16)
    assert data.base is None or data.base.nbytes == data.nbytes  # not a view into the chunk
    read: list[tuple[str, int]] = []
    real = ChunkStream._read
    monkeypatch.setattr(ChunkStream, "_read",
                        lambda self, i: (read.append((self.where, i)), real(self, i)))  # fmt: skip
    samples.skip(8)  # samples 1..8: chunk 1 (samples 4..7) of the image taps is never read
    key, ninth = samples.take()
    assert key == f"{SHARD}/000009"
    for tap, got in ninth.items():
        np.testing.assert_array_equal(decode_rows(got), want[key][tap])
    assert not [i for where, i in read if where.endswith("/image_s1") and i == 1]
    assert (f"{tmp_path / 's'}/{SHARD}/image_s1", 2) in read
