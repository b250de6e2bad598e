"""Chunk streams: rows copied out (never views into a chunk), skips that read nothing, and the
collate-time decoding of compact int-coded rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from clipocr.pipeline.teacher_store import parse_codec
from clipocr.pipeline.teacher_store.streams import (
    ChunkStream,
    Encoded,
    decode_rows,
    stack_rows,
)


def _array(tmp_path: Path, n: int = 20, chunk: int = 4) -> zarr.Array:
    arr = zarr.create_array(str(tmp_path / "a"), shape=(n, 3), chunks=(chunk, 3), dtype="f2")
    arr[:] = np.arange(n * 3, dtype=np.float16).reshape(n, 3)
    return arr


def test_take_copies_and_skip_reads_no_chunk(tmp_path: Path, monkeypatch) -> None:
    stream = ChunkStream(_array(tmp_path), "a")
    read: list[int] = []
    real = ChunkStream._read
    monkeypatch.setattr(ChunkStream, "_read", lambda self, i: (read.append(i), real(self, i)))
    first = stream.take(1)
    assert first.base is None or first.base.nbytes == first.nbytes  # its own copy, 6 bytes
    stream.skip(10)  # rows 1..10: chunk 1 is never read, chunk 2 is read for row 11
    np.testing.assert_array_equal(stream.take(2), [[33, 34, 35], [36, 37, 38]])
    np.testing.assert_array_equal(stream.take(4)[-1], [48, 49, 50])  # across a chunk boundary
    assert read == [0, 2, 3, 4]


def test_encoded_rows_decode_as_the_codec_does() -> None:
    codec = parse_codec("int8-channel")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7, 6)).astype(np.float32)
    ch = codec.calibrate(x)
    data, scale = codec.encode(x, ch)
    want = codec.decode(data, scale, ch)
    values = [Encoded(data[i], scale[i], ch) for i in range(5)]
    np.testing.assert_array_equal(stack_rows(values), want)
    np.testing.assert_array_equal(decode_rows(values[2]), want[2])
    plain = [x[i].astype(np.float16) for i in range(5)]  # float codecs: float16 rows as they are
    assert stack_rows(plain).dtype == np.float16
