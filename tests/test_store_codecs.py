"""Store codecs: documented error bounds, outlier-safe channel scales, bit rounding, names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from store_helpers import SHARD, expected_samples, spec, write_shard

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import CODECS, TeacherStore, parse_codec
from clipocr.pipeline.teacher_store.codecs import bitround


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


def _bitround_reference(h: np.ndarray, keepbits: int) -> np.ndarray:
    """Round-to-nearest-even on the float16 bit pattern, written out (the pre-numcodecs code)."""
    drop = 10 - keepbits
    bits = h.view(np.uint16)
    rounded = bits + np.uint16((1 << (drop - 1)) - 1) + ((bits >> drop) & np.uint16(1))
    rounded &= np.uint16(0xFFFF ^ ((1 << drop) - 1))
    return rounded.view(np.float16)


def test_bitround_is_bit_exact_on_every_finite_float16() -> None:
    """Same stored bytes as before numcodecs' BitRound did the rounding: old stores stay alike."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = np.isfinite(every)
    for keep in range(1, 10):
        got = bitround(every.copy(), keep)
        want = _bitround_reference(every.copy(), keep)
        np.testing.assert_array_equal(got[finite].view(np.uint16), want[finite].view(np.uint16))


def test_bitround_keeps_non_finite_values() -> None:
    """CUDA's NaN (0x7FFF) would round to -0.0 and other NaN payloads to Inf: kept as they came."""
    patterns = np.array([0x7FFF, 0x7C01, 0xFDFF, 0x7E00, 0x7C00, 0xFC00], np.uint16)
    h = patterns.view(np.float16)
    for keep in (1, 5, 9):
        np.testing.assert_array_equal(bitround(h.copy(), keep).view(np.uint16), patterns)
    # ...also through the whole encode path from float32 (CUDA's float32 NaN is 0x7FFFFFFF)
    x = np.array([[1.0, 0.0], [2.0, 3.0]], np.float32)
    x[0, 1] = np.array([0x7FFFFFFF], np.uint32).view(np.float32)[0]
    data, _ = parse_codec("bitround-5").encode(x)
    assert np.isnan(data[0, 1]) and np.isfinite(data[1]).all()


def test_codec_names() -> None:
    for name in CODECS:
        assert parse_codec(name).name == name
    assert parse_codec("zstd").lossless and not parse_codec("int8-token").lossless
    for bad in ("gzip", "bitround-10", "int9-token", "int8-row"):
        with pytest.raises(InputError, match="unknown store codec"):
            parse_codec(bad)
