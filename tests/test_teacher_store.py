import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import (
    CODECS,
    STAGES_IMAGE,
    STAGES_TEXT,
    StoreSpec,
    TeacherStore,
    TeacherStoreWriter,
    format_verify_report,
    parse_codec,
    shard_group_name,
)

DIMS = {"image_tokens": 3, "image": 16, "text": 8, "emb": 8}
SHARD = "shard-000000"


def spec(**over) -> StoreSpec:
    kw = dict(
        teacher={"model": "ViT-B-16", "pretrained": "openai", "checksum": "abc"},
        preprocessing={"image_size": [32, 128], "pos_embed": "crop"},
        dims=DIMS,
    )
    kw.update(over)
    return StoreSpec(**kw)


def batch(rng, start: int, b: int, outliers: bool = False, shard: str = SHARD):
    """Keys plus teacher-like features; text padded to 6 rows with 1..6 valid ones."""
    feats = {t: rng.standard_normal((b, 3, 16)).astype(np.float32) for t in STAGES_IMAGE}
    feats |= {t: rng.standard_normal((b, 6, 8)).astype(np.float32) for t in STAGES_TEXT}
    feats["text_emb"] = rng.standard_normal((b, 8)).astype(np.float32)
    feats["text_lengths"] = rng.integers(1, 7, size=b)
    if outliers:
        for t in STAGES_IMAGE:
            feats[t][..., :2] *= 40.0
    return [f"{shard}/{i:06d}" for i in range(start, start + b)], feats


def write_shard(root, sp, sizes, seed=0, chunk=4, missing=(), **kw):
    rng = np.random.default_rng(seed)
    writer = TeacherStoreWriter(root, sp, chunk_samples=chunk)
    batches, start = [], 0
    with writer.open_shard(SHARD) as group:
        for b in sizes:
            keys, feats = batch(rng, start, b, **kw)
            group.append(keys, feats)
            batches.append((keys, feats))
            start += b
        group.commit(missing=missing)
    return batches


def expected_samples(batches):
    """Per sample, the input features with text cut to its valid rows."""
    out = []
    for keys, feats in batches:
        for i, key in enumerate(keys):
            n = feats["text_lengths"][i]
            sample = {t: feats[t][i] for t in STAGES_IMAGE + ("text_emb",)}
            sample |= {t: feats[t][i, :n] for t in STAGES_TEXT}
            out.append((key, sample))
    return out


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


def _bound(codec: str, x: np.ndarray, chscale: np.ndarray | None) -> np.ndarray:
    """The documented worst-case absolute error of `codec` for rows x (..., D)."""
    c = parse_codec(codec)
    if c.kind == "bitround":
        return (2.0 ** -(c.keepbits + 1) + 2.0**-11) * np.abs(x) * 1.0001 + 1e-7
    qmax = 2 ** (c.bits - 1) - 1
    y = x / chscale if chscale is not None else x
    step = np.abs(y).max(-1, keepdims=True) / qmax
    return step / 2 * (chscale if chscale is not None else 1.0) * 1.0001 + 1e-7


@pytest.mark.parametrize(
    "codec",
    ["bitround-3", "bitround-7", "int8-token", "int4-token", "int8-channel", "int6-channel"],
)
def test_lossy_codecs_bounded_error(tmp_path: Path, codec: str) -> None:
    batches = write_shard(tmp_path / "s", spec(codec=codec), [5, 6])
    store = TeacherStore(tmp_path / "s")
    assert store.manifest["codec"] == codec
    group = zarr.open_group(str(tmp_path / "s" / SHARD), mode="r")
    got = dict(store.iter_shard(SHARD))
    worst = 0.0
    for key, w in expected_samples(batches):
        for tap, x in w.items():
            ch = group[f"{tap}_chscale"][:] if codec.endswith("channel") else None
            err = np.abs(got[key][tap] - x)
            assert np.all(err <= _bound(codec, x, ch)), (codec, tap)
            worst = max(worst, float(err.max()))
    assert worst > 0  # lossy for real, so the bound is what is being tested


def test_channel_scales_protect_ordinary_channels_from_outliers(tmp_path: Path) -> None:
    errs = {}
    for codec in ("int8-token", "int8-channel"):
        batches = write_shard(tmp_path / codec, spec(codec=codec), [8, 8], outliers=True)
        got = dict(TeacherStore(tmp_path / codec).iter_shard(SHARD))
        diff = [
            got[k]["image_s1"][:, 2:] - w["image_s1"][:, 2:] for k, w in expected_samples(batches)
        ]
        errs[codec] = float(np.sqrt(np.mean(np.square(diff))))
    assert errs["int8-channel"] < errs["int8-token"] / 5


def test_writer_streams_whole_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    writer = TeacherStoreWriter(tmp_path / "s", spec(), chunk_samples=4)
    with writer.open_shard(SHARD) as group:
        group.append(*batch(rng, 0, 10))
        # two full chunks are on storage already; the rest waits in a buffer < one chunk
        assert group.group["image_s1"].shape[0] == 8
        assert group.group["keys"].shape[0] == 0  # one chunk holds a whole shard's keys
        group.commit()


def test_interrupted_writer_leaves_no_visible_group(tmp_path: Path) -> None:
    root = tmp_path / "s"
    rng = np.random.default_rng(0)
    writer = TeacherStoreWriter(root, spec())
    with pytest.raises(RuntimeError, match="teacher died"):
        with writer.open_shard(SHARD) as group:
            group.append(*batch(rng, 0, 4))
            raise RuntimeError("teacher died")
    assert TeacherStore(root).shards() == {} and not writer.is_complete(SHARD)
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "zarr.json"]


def test_killed_writer_then_rerun_completes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    TeacherStoreWriter(root, spec())  # the driver creates the store before the workers start
    script = textwrap.dedent(
        f"""
        import sys, time, numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_teacher_store import batch, spec, SHARD
        from clipocr.pipeline.teacher_store import TeacherStoreWriter
        group = TeacherStoreWriter({str(root)!r}, spec()).open_shard(SHARD)
        group.append(*batch(np.random.default_rng(0), 0, 6))
        print("half", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half"
    finally:
        proc.kill()
        proc.wait()
    store = TeacherStore(root)
    assert store.shards() == {}
    report = store.verify({"shards": [{"name": f"{SHARD}.tar", "count": 6}]})
    assert not report["ok"] and len(report["stale_temporary_groups"]) == 1
    # the rerun clears the leftover and publishes the shard
    write_shard(root, spec(), [6])
    assert store.shards() == {SHARD: 6}
    report = store.verify({"shards": [{"name": f"{SHARD}.tar", "count": 6}]})
    assert report["ok"] and report["stale_temporary_groups"] == [], report["problems"]


def test_object_store_uses_complete_flag(tmp_path: Path) -> None:
    root = f"memory://store-{uuid.uuid4().hex}"
    rng = np.random.default_rng(0)
    writer = TeacherStoreWriter(root, spec())
    group = writer.open_shard(SHARD)
    group.append(*batch(rng, 0, 5))
    store = TeacherStore(root)
    assert store.shards() == {} and not writer.is_complete(SHARD)  # written in place, not flagged
    with pytest.raises(InputError, match="no complete teacher group"):
        next(store.iter_shard(SHARD))
    group.commit()
    assert store.shards() == {SHARD: 5} and len(list(store.iter_shard(SHARD))) == 5


def test_complete_shard_is_not_reopened_unless_overwrite(tmp_path: Path) -> None:
    write_shard(tmp_path / "s", spec(), [3])
    writer = TeacherStoreWriter(tmp_path / "s", spec())
    assert writer.is_complete(SHARD)
    with pytest.raises(InputError, match="already complete"):
        writer.open_shard(SHARD)
    rng = np.random.default_rng(1)
    with writer.open_shard(SHARD, overwrite=True) as group:
        group.append(*batch(rng, 0, 2))
        group.commit()
    assert TeacherStore(tmp_path / "s").shards() == {SHARD: 2}


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


def test_append_validates_shapes(tmp_path: Path) -> None:
    writer = TeacherStoreWriter(tmp_path / "s", spec())
    keys, feats = batch(np.random.default_rng(0), 0, 2)
    with writer.open_shard(SHARD) as group:
        with pytest.raises(ValueError, match="image_s1"):
            group.append(keys, feats | {"image_s1": feats["image_s1"][:, :2]})
        with pytest.raises(ValueError, match="taps"):
            group.append(keys, {k: v for k, v in feats.items() if k != "text_emb"})
        with pytest.raises(ValueError, match="text_lengths exceed"):
            group.append(keys, feats | {"text_lengths": np.array([7, 1])})


def test_codec_names() -> None:
    for name in CODECS:
        assert parse_codec(name).name == name
    assert parse_codec("zstd").lossless and not parse_codec("int8-token").lossless
    for bad in ("gzip", "bitround-10", "int9-token", "int8-row"):
        with pytest.raises(InputError, match="unknown store codec"):
            parse_codec(bad)
    with pytest.raises(InputError, match="codec"):
        spec(codec="lz4")
    with pytest.raises(InputError, match="missing emb"):
        spec(dims={"image_tokens": 3, "image": 16, "text": 8})


def test_shard_group_name() -> None:
    assert shard_group_name("/data/shards/shard-000042.tar") == "shard-000042"
    assert shard_group_name("shard-000001") == "shard-000001"
