"""Reading a group's arrays front to back, a whole chunk at a time, with skips that read nothing.

A Zarr chunk is the unit of reading and decoding (decompression + CRC32C), so the readers here
hold at most one decoded chunk per array, in the array's stored dtype, and hand out rows from
it. `ChunkStream.skip` moves past rows without touching their chunks, so a resumed training run
passes the samples it already trained on by count (issue 22) instead of decoding them.

What a sample keeps is a compact copy of its own rows (`Encoded`, or a plain float16 array),
never a view into the chunk: a view would keep the whole decoded chunk alive for as long as
the sample waits in a shuffle buffer (issue 22: +1.5 GB per DataLoader worker). Rows are
turned into float32 only when a batch is collated (`decode_rows`, `stack_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store.codecs import Codec


@dataclass(frozen=True, slots=True)
class Encoded:
    """One sample's rows of a tap as stored by an int codec: int8 ``data`` (..., D), one float32
    ``scale`` per row, the group's channel scales ``chscale`` (D,) or None. Float codecs need no
    scales, so their samples hold the float16 rows themselves."""

    data: np.ndarray
    scale: np.ndarray
    chscale: np.ndarray | None


Rows = np.ndarray | Encoded


def decode_rows(value: Rows) -> np.ndarray:
    """A sample's stored rows → float32, as `Codec.decode` computes them."""
    if not isinstance(value, Encoded):
        return np.asarray(value, dtype=np.float32)
    out = value.data.astype(np.float32)
    out *= value.scale[..., None]
    if value.chscale is not None:
        out *= value.chscale
    return out


def stack_rows(values: list[Rows]) -> np.ndarray:
    """Same-shaped rows of several samples stacked: float16 rows stay float16 (no float32 copy),
    int-coded ones are decoded to float32 in one vectorised pass."""
    if not isinstance(values[0], Encoded):
        return np.stack(values)
    out = np.stack([v.data for v in values]).astype(np.float32)
    out *= np.stack([v.scale for v in values])[..., None]
    if values[0].chscale is not None:
        ch = np.stack([v.chscale for v in values])
        out *= ch.reshape(len(values), *([1] * (out.ndim - 2)), ch.shape[-1])
    return out


def rows_len(value: Rows) -> int:
    return len(value.data) if isinstance(value, Encoded) else len(value)


class ChunkStream:
    """One array read front to back a chunk at a time; `take` copies rows out, `skip` passes rows
    without reading them (a chunk is read only when a taken row lies in it)."""

    def __init__(self, array: zarr.Array, where: str) -> None:
        self.array = array
        self.where = where
        self.chunk = int(array.chunks[0])
        self.length = int(array.shape[0])
        self.row = 0  # the next row to hand out
        self.start = 0  # the first row of `buf`
        self.buf = np.empty((0, *array.shape[1:]), array.dtype)

    def skip(self, n: int) -> None:
        self.row += n

    def take(self, n: int) -> np.ndarray:
        """Rows ``row : row + n``, copied (never a view into the chunk)."""
        if n == 0:
            return np.empty((0, *self.array.shape[1:]), self.array.dtype)
        end = self.row + n
        if end > self.length:
            raise InputError(f"{self.where}: ends before the rows its group counts")
        parts = []
        while self.row < end:
            if not self.start <= self.row < self.start + len(self.buf):
                self._read(self.row // self.chunk)
            k = min(end, self.start + len(self.buf)) - self.row
            parts.append(self.buf[self.row - self.start : self.row - self.start + k])
            self.row += k
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

    def _read(self, index: int) -> None:
        a = index * self.chunk
        try:
            self.buf = self.array[a : min(a + self.chunk, self.length)]
        except Exception as err:  # checksum mismatch, codec error, I/O error
            raise InputError(
                f"{self.where}: chunk {index} unreadable ({type(err).__name__}: {err}); the "
                "store is damaged: delete this group and rerun cache-teacher"
            ) from None
        self.start = a


class TapStream:
    """One tap of one group: its data and, for int codecs, its per-row scales, side by side."""

    def __init__(self, group: zarr.Group, tap: str, codec: Codec, where: str) -> None:
        self.codec = codec
        self.data = ChunkStream(group[tap], f"{where}/{tap}")
        scale = f"{tap}_scale"
        self.scale = ChunkStream(group[scale], f"{where}/{scale}") if codec.has_scale else None
        # A shard committed with no samples was never calibrated and has no channel scales.
        chscale = f"{tap}_chscale"
        self.chscale = group[chscale][:] if codec.per_channel and chscale in group else None

    def skip(self, n: int) -> None:
        self.data.skip(n)
        if self.scale is not None:
            self.scale.skip(n)

    def take(self, n: int) -> Rows:
        """The next `n` rows as stored (compact copies)."""
        data = self.data.take(n)
        if self.scale is None:
            return data
        return Encoded(data, self.scale.take(n), self.chscale)

    def take_float32(self, n: int) -> np.ndarray:
        return decode_rows(self.take(n))

    def take_one(self) -> Rows:
        """The next row alone (a sample's image tap or embedding), without the leading axis."""
        value = self.take(1)
        if isinstance(value, Encoded):
            return Encoded(value.data[0], value.scale[0], value.chscale)
        return value[0]
