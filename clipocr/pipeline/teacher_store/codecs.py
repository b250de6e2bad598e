"""How one tap's float32 features become stored arrays and back (`parse_codec`, `Codec`).

``zstd`` (default) stores float16 losslessly with Blosc-zstd and byte shuffle. Lossy options,
whose fidelity `bench/bench_store_codecs.py` measures:

* ``bitround-K``: float16 with only K of its 10 mantissa bits kept (round to nearest even); the
  relative error per value is ≤ 2^-(K+1). Needs no scales, suits either storage form.
* ``intB-token``: signed B-bit integers (4 ≤ B ≤ 8, stored as int8 and entropy-coded by zstd)
  with one float32 scale per token row, ``absmax / (2^(B-1) - 1)``; error ≤ scale / 2. Accurate
  for the ``normalised`` form, where every token has unit scale — unless the teacher has outlier
  channels, which then set every token's absmax and coarsen all other channels.
* ``intB-channel``: first divides every channel by a per-channel scale, then quantises per
  token as above. The channel scales are calibrated per shard from the first appended batch (the
  channel RMS over its valid rows, floored at 1e-3 of the largest) and stored beside the data as
  ``<tap>_chscale``; being followed by the per-token absmax they can never clip, so a first
  batch that is not representative costs precision, never correctness.

Measured for ViT-B/16 shapes (bench/bench_store_codecs.py): ``int8-channel`` and ``bitround-5``
keep per-token cosine ≥ 0.9996 and every channel's relative error < 1 % at about half the float16
size, with or without outlier channels; ``intB-token`` fails once outlier channels exist.

Every codec stores plain float16 or int8 (+ float32 scales) under Blosc, so decoding needs no
knowledge of how values were rounded: stores written by any earlier version read the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from numcodecs import BitRound
from zarr.codecs import BloscCodec

from clipocr.pipeline.errors import InputError

CODECS: dict[str, str] = {
    "zstd": "float16 + Blosc-zstd (byte shuffle); lossless w.r.t. float16 [default]",
    "bitround-3": "float16 rounded to 3 mantissa bits (rel. error <= 2^-4) + Blosc-zstd",
    "bitround-4": "float16 rounded to 4 mantissa bits (rel. error <= 2^-5) + Blosc-zstd",
    "bitround-5": "float16 rounded to 5 mantissa bits (rel. error <= 2^-6) + Blosc-zstd",
    "int8-token": "int8 with one float32 scale per token + zstd",
    "int8-channel": "int8, per-shard channel scales then one scale per token + zstd",
    "int7-channel": "7-bit ints, per-shard channel scales then one scale per token + zstd",
    "int6-channel": "6-bit ints, per-shard channel scales then one scale per token + zstd",
}
"""Preset codec names (for CLI help). `parse_codec` also takes any ``bitround-K`` (1 ≤ K ≤ 9) and
``intB-token`` / ``intB-channel`` (4 ≤ B ≤ 8)."""

_CODEC_RE = re.compile(
    r"^(?:(?P<zstd>zstd)|bitround-(?P<keep>\d+)|int(?P<bits>\d)-(?P<mode>token|channel))$"
)
_BLOSC_BLOCK = 1 << 18


@dataclass(frozen=True)
class Codec:
    """How one tap's float32 rows (..., D) become stored arrays and back."""

    name: str
    kind: str  # "float16" | "bitround" | "int"
    keepbits: int = 10
    bits: int = 8
    per_channel: bool = False

    @property
    def lossless(self) -> bool:
        return self.kind == "float16"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int8 if self.kind == "int" else np.float16)

    @property
    def has_scale(self) -> bool:
        return self.kind == "int"

    @property
    def input_dtype(self) -> np.dtype:
        """The dtype `encode` works in: float16 codecs never need a float32 copy."""
        return np.dtype(np.float32 if self.kind == "int" else np.float16)

    def compressor(self) -> BloscCodec:
        # Measured on teacher features (bench/store_size.py --compressors: the demo teacher's and
        # ViT-B/16-shaped ones): byte shuffle suits float16 (exponent bytes compress, mantissa
        # bytes barely; bit shuffle was 8 % larger); zstd level 1 gives level 3's size (within
        # 0.1 %) and was as fast or faster in most runs (the shared CPU made timings noisy),
        # level 5 is 0.4 % smaller at a fifth of the speed or less; lz4 does not compress
        # float16 features at all (ratio 1.00). For int8 shuffle is a no-op and the
        # level does not matter (zstd's entropy coding of the few levels in use does the work).
        shuffle = "noshuffle" if self.kind == "int" else "shuffle"
        return BloscCodec(cname="zstd", clevel=1, shuffle=shuffle, blocksize=_BLOSC_BLOCK)

    def calibrate(self, x: np.ndarray) -> np.ndarray | None:
        """Per-channel scales (D,) from rows ``x`` (..., D), or None when the codec has none."""
        if not self.per_channel:
            return None
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
        flat = flat[np.isfinite(flat).all(axis=1)]
        if not len(flat):
            return np.ones(x.shape[-1], np.float32)
        rms = np.sqrt(np.mean(flat * flat, axis=0))
        top = rms.max()
        if top == 0:
            return np.ones(x.shape[-1], np.float32)
        return np.maximum(rms, 1e-3 * top).astype(np.float32)

    def encode(
        self, x: np.ndarray, chscale: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``x`` (..., D), float16 or float32 → (stored data, per-row float32 scale or None).

        Float16 input to a float16 codec is stored as it came (no copy)."""
        if self.kind == "float16":
            return x.astype(np.float16, copy=False), None
        if self.kind == "bitround":
            return bitround(x.astype(np.float16, copy=False), self.keepbits), None
        qmax = 2 ** (self.bits - 1) - 1
        x = x.astype(np.float32, copy=False)
        y = x / chscale if self.per_channel else x.copy()
        with np.errstate(invalid="ignore", over="ignore"):
            amax = np.max(np.abs(y), axis=-1)
            scale = np.where(amax == 0, 1.0, amax / qmax).astype(np.float32)
            finite = np.isfinite(scale)
            if not finite.all():
                # The row keeps its non-finite scale, so it decodes non-finite and
                # `TeacherStore.verify` reports it instead of it turning into silent zeros.
                y[~finite] = 0.0
            y *= np.where(finite, 1.0 / scale, 0.0)[..., None]
        np.rint(y, out=y)
        np.clip(y, -qmax, qmax, out=y)
        return y.astype(np.int8), scale

    def decode(
        self, data: np.ndarray, scale: np.ndarray | None = None, chscale: np.ndarray | None = None
    ) -> np.ndarray:
        """Stored arrays → float32 (..., D)."""
        out = data.astype(np.float32)
        if self.kind == "int":
            out *= scale[..., None]
            if self.per_channel:
                out *= chscale
        return out


def bitround(h: np.ndarray, keepbits: int) -> np.ndarray:
    """Round float16 to `keepbits` mantissa bits, to nearest even; non-finite values unchanged.

    The rounding is numcodecs' `BitRound` (bit for bit the same on every finite float16; a carry
    into the exponent is the correct rounding up to the next power of two). BitRound also rounds
    the mantissa of NaNs, which can carry out of the exponent: CUDA's canonical NaN (float16
    ``0x7FFF``) becomes ``-0.0`` at 5 kept bits, and other NaN payloads become ±Inf. A teacher
    that produced NaNs would then be stored as plausible zeros that `TeacherStore.verify` cannot
    see, so the non-finite inputs are put back as they came.
    """
    out = BitRound(keepbits).encode(h).view(np.float16)
    bad = ~np.isfinite(h)
    if bad.any():
        out[bad] = h[bad]
    return out


def parse_codec(name: str) -> Codec:
    """A codec from its name (see `CODECS`), or an InputError listing the accepted names."""
    m = _CODEC_RE.match(name)
    if m and m["zstd"]:
        return Codec(name, "float16")
    if m and m["keep"] is not None and 1 <= int(m["keep"]) <= 9:
        return Codec(name, "bitround", keepbits=int(m["keep"]))
    if m and m["bits"] is not None and 4 <= int(m["bits"]) <= 8:
        return Codec(name, "int", bits=int(m["bits"]), per_channel=m["mode"] == "channel")
    raise InputError(
        f"unknown store codec {name!r}: use zstd, bitround-K (K 1..9), intB-token or "
        "intB-channel (B 4..8)"
    )


def count_nonfinite(x: np.ndarray) -> int:
    """NaN/Inf values in a float16/float32 array, from the exponent bits: no float copies (a
    float16 ``isfinite`` costs ten times this), and a full count only when there are any."""
    if x.dtype == np.float16:
        bits, exp = x.view(np.uint16), np.uint16(0x7C00)
    elif x.dtype == np.float32:
        bits, exp = x.view(np.uint32), np.uint32(0x7F800000)
    else:
        return int(x.size - np.isfinite(x).sum())
    bad = (bits & exp) == exp
    return int(bad.sum()) if bad.any() else 0
