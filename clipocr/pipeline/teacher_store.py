"""The teacher store: cached CLIP stage features, the one contract between caching and training.

Layout (DESIGN §5)::

    ROOT/manifest.json        teacher fingerprint, written once when the store is created
    ROOT/zarr.json            the root Zarr group (so Zarr tools can open the store)
    ROOT/shard-000000/        one Zarr group per source shard, named after the shard file stem
        keys          (n,)        str      sample keys "<shard>/<index>", in shard order
        image_s1..3   (n, N, D)   float16 | int8
        text_offsets  (n+1,)      int64    sample i owns rows offsets[i]:offsets[i+1] of text_s*
        text_s1..3    (T, D)      float16 | int8   ragged: L+1 rows per sample (c1..cL, EOT)
        text_emb      (n, E)      float16 | int8
        <tap>_scale   (n, N) / (T,) / (n,) float32   int codecs: one scale per token row
        <tap>_chscale (D,)        float32  int "-channel" codecs: the shard's channel scales

Why per-shard groups: caching runs one task per shard on many workers, so each group has exactly
one writer and no chunk is ever shared. Counts live in each group's attributes (``count``,
``missing``, ``complete``) rather than in the manifest, so concurrent workers never rewrite a
shared file; `TeacherStore.shards` lists the groups.

Atomic completion. On a local path a group is written under ``.tmp-<uuid>-<name>`` and renamed
to ``<name>`` by `ShardGroupWriter.commit`, after its ``complete`` attribute is set, so a crash
leaves nothing under a visible name. Object stores (any fsspec URL) have no atomic rename: there
the group is written under its final name and the ``complete`` attribute, written last, is the
visibility criterion — readers ignore any group without it, on every kind of storage. A rerun
clears a shard's leftovers (`TeacherStoreWriter.open_shard`); on object stores ``overwrite``
deletes the old complete group when the new writer opens, not when it commits.

Reading (`TeacherStore.iter_shard`, `iter_chunks`) streams a group front to back, reading and
decoding every chunk exactly once: no per-sample random access. Samples the teacher could not
process (undecodable images) are absent from the arrays and listed in the ``missing`` attribute.

Codecs (`parse_codec`): ``zstd`` (default) stores float16 losslessly with Blosc-zstd and byte
shuffle. Lossy options, whose fidelity `bench/bench_store_codecs.py` measures:

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

The ``form`` recorded in the manifest says whether features were stored per-token normalised
(LayerNorm without affine, DESIGN §5) or raw; the teacher side normalises before appending.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec

import clipocr
from clipocr.pipeline.errors import InputError

log = logging.getLogger(__name__)

STORE_FORMAT = "clipocr-teacher-store/1"
MANIFEST_NAME = "manifest.json"
TMP_PREFIX = ".tmp-"
STAGES_IMAGE = ("image_s1", "image_s2", "image_s3")
STAGES_TEXT = ("text_s1", "text_s2", "text_s3")
TEXT_EMB = "text_emb"
ALL_TAPS = STAGES_IMAGE + STAGES_TEXT + (TEXT_EMB,)
FORMS = ("normalised", "raw")
DEFAULT_CHUNK_SAMPLES = 256
# Text rows per chunk = chunk_samples × this (mean L+1 is about 7 for MJ/ST words).
TEXT_ROWS_PER_SAMPLE = 8
# keys / text_offsets are small; one chunk holds a whole shard.
INDEX_CHUNK = 65536

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


# --------------------------------------------------------------------------------------------
# codecs
# --------------------------------------------------------------------------------------------
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

    def compressor(self) -> BloscCodec:
        # Measured on ViT features (bench/bench_store_codecs.py and by hand): byte shuffle suits
        # float16 (exponent bytes compress, mantissa bytes barely); level 3 with 256 KiB blocks
        # is within 0.2 % of level 5's size at 1.6x its speed (level 7: 3 % smaller, 5x slower).
        # For int8 shuffle is a no-op and the level does not matter (zstd's entropy coding of
        # the few levels in use does the work), so level 1.
        if self.kind == "int":
            return BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle", blocksize=_BLOSC_BLOCK)
        return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", blocksize=_BLOSC_BLOCK)

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
        """``x`` float32 (..., D) → (stored data, per-row float32 scale or None)."""
        if self.kind == "float16":
            return x.astype(np.float16), None
        if self.kind == "bitround":
            return _bitround(x.astype(np.float16), self.keepbits), None
        qmax = 2 ** (self.bits - 1) - 1
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


def _bitround(h: np.ndarray, keepbits: int) -> np.ndarray:
    """Round float16 to `keepbits` mantissa bits, to nearest even; non-finite values unchanged."""
    drop = 10 - keepbits
    bits = h.view(np.uint16)
    # Finite values cannot overflow 16 bits here (max 0xFBFF + 0x1FF); a carry into the
    # exponent is the correct rounding up to the next power of two.
    rounded = bits + np.uint16((1 << (drop - 1)) - 1) + ((bits >> drop) & np.uint16(1))
    rounded &= np.uint16(0xFFFF ^ ((1 << drop) - 1))
    out = rounded.view(np.float16)
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


# --------------------------------------------------------------------------------------------
# spec / manifest
# --------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """Tuples → lists etc., so a spec compares equal to what came back from manifest.json."""
    return json.loads(json.dumps(value))


def _diff(have: Any, want: Any, prefix: str = "") -> list[str]:
    """Dotted paths where `have` differs from `want`, for the keys `want` names."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [f"{prefix or 'manifest'}: store {have!r} != {want!r}"]
        out: list[str] = []
        for key, value in want.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in have:
                out.append(f"{path}: absent from store, expected {value!r}")
            else:
                out += _diff(have[key], value, path)
        return out
    return [] if have == want else [f"{prefix}: store {have!r} != {want!r}"]


def _required_dims(taps: Iterable[str]) -> set[str]:
    need: set[str] = set()
    for tap in taps:
        if tap in STAGES_IMAGE:
            need |= {"image_tokens", "image"}
        elif tap in STAGES_TEXT:
            need.add("text")
        elif tap == TEXT_EMB:
            need.add("emb")
    return need


@dataclass
class StoreSpec:
    """Everything that decides what the cached targets are: two different specs never share a store.

    `teacher` holds ``model``, ``pretrained`` and ``checksum`` (of the weights); `preprocessing`
    whatever the teacher's input pipeline depends on (image size, mean/std, pos-embed mode …);
    `dims` the feature sizes ``image_tokens``, ``image``, ``text``, ``emb``.
    """

    teacher: dict
    preprocessing: dict
    dims: dict
    form: str = "normalised"
    codec: str = "zstd"
    charset: str = "36"
    code_version: str = clipocr.__version__
    taps: tuple[str, ...] = field(default=ALL_TAPS)

    def __post_init__(self) -> None:
        self.taps = tuple(self.taps)
        if self.form not in FORMS:
            raise InputError(f"store form {self.form!r}: expected one of {', '.join(FORMS)}")
        parse_codec(self.codec)
        unknown = [t for t in self.taps if t not in ALL_TAPS]
        if unknown or not self.taps:
            raise InputError(f"store taps {list(self.taps)}: each must be one of {ALL_TAPS}")
        absent = sorted(_required_dims(self.taps) - set(self.dims))
        if absent:
            raise InputError(f"store dims {self.dims}: missing {', '.join(absent)}")

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> StoreSpec:
        """From `to_dict` output or a whole manifest (extra keys are ignored)."""
        names = ("teacher", "preprocessing", "dims", "form", "codec", "charset", "code_version")
        kwargs = {k: d[k] for k in names if k in d}
        if "taps" in d:
            kwargs["taps"] = tuple(d["taps"])
        return cls(**kwargs)


def shard_group_name(shard: str | Path) -> str:
    """A source shard's group name, its file stem: ``.../shard-000000.tar`` → ``shard-000000``."""
    name = Path(str(shard)).name
    return name[: -len(".tar")] if name.endswith(".tar") else Path(name).stem


def _check_group_name(name: str) -> None:
    if (
        not name
        or "/" in name
        or name.startswith((".", "__"))
        or name in (MANIFEST_NAME, "zarr.json")
    ):
        raise ValueError(f"{name!r} is not a valid shard group name")


# --------------------------------------------------------------------------------------------
# storage location
# --------------------------------------------------------------------------------------------
class _Location:
    """A store root: a local folder (atomic renames) or an fsspec URL (no renames)."""

    def __init__(self, root: str | Path) -> None:
        text = str(root)
        self.local = isinstance(root, Path) or "://" not in text or text.startswith("file://")
        if self.local:
            self.path = Path(text.removeprefix("file://"))
            self.url = str(self.path)
            self.fs = fsspec.filesystem("file")
            self.base = str(self.path)
        else:
            self.url = text.rstrip("/")
            self.fs, self.base = fsspec.core.url_to_fs(self.url)

    def __str__(self) -> str:
        return self.url

    def child(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _fs_path(self, name: str) -> str:
        return f"{self.base}/{name}" if name else self.base

    def exists(self, name: str) -> bool:
        return self.fs.exists(self._fs_path(name))

    def read_text(self, name: str) -> str | None:
        try:
            return self.fs.cat_file(self._fs_path(name)).decode("utf-8")
        except FileNotFoundError:
            return None

    def create_text(self, name: str, text: str) -> bool:
        """Write `name` unless it exists; False if it did. Atomic on local paths."""
        if not self.local:
            if self.exists(name):
                return False
            self.fs.pipe_file(self._fs_path(name), text.encode("utf-8"))
            return True
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        tmp.write_text(text)
        try:
            os.link(tmp, self.path / name)  # fails if present: exclusive, and never partial
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def dirs(self) -> list[str]:
        if not self.exists(""):
            return []
        entries = self.fs.ls(self.base, detail=True)
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
        )

    def remove(self, name: str) -> None:
        if self.local:
            shutil.rmtree(self.path / name, ignore_errors=True)
        elif self.exists(name):
            self.fs.rm(self._fs_path(name), recursive=True)

    def rename(self, src: str, dst: str) -> None:
        os.rename(self.path / src, self.path / dst)

    def nbytes(self, name: str = "") -> int:
        return int(self.fs.du(self._fs_path(name), total=True))


def _group_attrs(loc: _Location, name: str) -> dict | None:
    """A group's attributes, or None if there is no group by that name."""
    text = loc.read_text(f"{name}/zarr.json")
    if text is None:
        return None
    try:
        return json.loads(text).get("attributes", {})
    except json.JSONDecodeError:
        return None


def _tmp_owner(dirname: str) -> str | None:
    """The group name a temporary group ``.tmp-<32 hex>-<name>`` belongs to."""
    if not dirname.startswith(TMP_PREFIX):
        return None
    rest = dirname[len(TMP_PREFIX) :]
    return rest[33:] if len(rest) > 33 and rest[32] == "-" else None


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------
class TeacherStoreWriter:
    """Opens (creating if needed) a store for one teacher spec; hands out per-shard writers.

    Create it once in the driver before starting workers: on object stores creating the
    manifest is not atomic, on local paths it is (concurrent creators agree or fail).
    """

    def __init__(
        self, root: str | Path, spec: StoreSpec, chunk_samples: int = DEFAULT_CHUNK_SAMPLES
    ) -> None:
        self.loc = _Location(root)
        self.spec = spec
        self.codec = parse_codec(spec.codec)
        self.chunk_samples = int(chunk_samples)
        manifest = {
            "format": STORE_FORMAT,
            **spec.to_dict(),
            "storage": {
                "dtype": str(self.codec.dtype),
                "scale_dtype": "float32" if self.codec.has_scale else None,
                "codec": CODECS.get(spec.codec, spec.codec),
                "counts": "per shard group: attributes count / missing / complete",
            },
        }
        if self.loc.create_text(MANIFEST_NAME, json.dumps(manifest, indent=2)):
            zarr.open_group(
                self.loc.url, mode="a", zarr_format=3, attributes={"format": STORE_FORMAT}
            )
            self.manifest = manifest
        else:
            self.manifest = _read_manifest(self.loc)
            diffs = _diff(self.manifest, spec.to_dict())
            if diffs:
                raise InputError(
                    f"{self.loc.child(MANIFEST_NAME)}: store was made for another teacher setup "
                    f"(use a new store): {'; '.join(diffs)}"
                )

    @property
    def root(self) -> str:
        return self.loc.url

    def is_complete(self, shard_name: str) -> bool:
        attrs = _group_attrs(self.loc, shard_name)
        return bool(attrs and attrs.get("complete"))

    def open_shard(self, shard_name: str, overwrite: bool = False) -> ShardGroupWriter:
        """A writer for one shard's group. Removes leftovers of earlier failed attempts."""
        _check_group_name(shard_name)
        if self.is_complete(shard_name) and not overwrite:
            raise InputError(f"{self.loc.child(shard_name)}: already complete")
        for d in self.loc.dirs():
            if _tmp_owner(d) == shard_name:
                self.loc.remove(d)
        if not self.is_complete(shard_name):
            self.loc.remove(shard_name)  # an incomplete group under the final name (object store)
        return ShardGroupWriter(self, shard_name)


class _Appender:
    """Buffers rows of one growing array and writes them a whole chunk at a time."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.chunk = array.chunks[0]
        self.parts: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0

    def append(self, rows: np.ndarray) -> None:
        if len(rows):
            self.parts.append(rows)
            self.buffered += len(rows)
        if self.buffered >= self.chunk:
            self._flush(final=False)

    def close(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        if not self.parts:
            return
        data = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        n = len(data) if final else len(data) // self.chunk * self.chunk
        if n:
            end = self.written + n
            self.array.resize((end, *self.array.shape[1:]))
            self.array[self.written : end] = data[:n]
            self.written = end
        rest = data[n:]
        self.parts = [rest] if len(rest) else []
        self.buffered = len(rest)


class ShardGroupWriter:
    """Streams one shard's targets into its group; `commit` publishes it, `abort` drops it.

    Memory: at most about one chunk (+ the batch being appended) per array.
    """

    def __init__(self, store: TeacherStoreWriter, name: str) -> None:
        self.store = store
        self.name = name
        self.codec = store.codec
        self.taps = store.spec.taps
        self.dims = store.spec.dims
        loc = store.loc
        self._dir = f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}" if loc.local else name
        self.group = zarr.open_group(
            loc.child(self._dir),
            mode="w",
            zarr_format=3,
            attributes={
                "format": STORE_FORMAT,
                "shard": name,
                "codec": self.codec.name,
                "chunk_samples": store.chunk_samples,
                "complete": False,
            },
        )
        self.count = 0
        self.text_rows = 0
        self._done = False
        self._calibrated = False
        self._chscale: dict[str, np.ndarray | None] = {}
        self._app: dict[str, _Appender] = {}
        self._make_arrays()

    # -- layout ------------------------------------------------------------------------------
    def _row_shape(self, tap: str) -> tuple[int, ...]:
        if tap in STAGES_IMAGE:
            return (self.dims["image_tokens"], self.dims["image"])
        return (self.dims["text"],) if tap in STAGES_TEXT else (self.dims["emb"],)

    def _new(self, name: str, shape: tuple[int, ...], chunk: int, dtype: Any, comp: Any) -> None:
        kwargs = {} if comp is None else {"compressors": comp}
        arr = self.group.create_array(
            name, shape=(0, *shape), chunks=(chunk, *shape), dtype=dtype, fill_value=0, **kwargs
        )
        self._app[name] = _Appender(arr)

    def _make_arrays(self) -> None:
        cs = self.store.chunk_samples
        self.group.create_array("keys", shape=(0,), chunks=(INDEX_CHUNK,), dtype=str)
        self._app["keys"] = _Appender(self.group["keys"])
        if any(t in STAGES_TEXT for t in self.taps):
            self._new("text_offsets", (), INDEX_CHUNK, np.int64, None)
            self._app["text_offsets"].append(np.zeros(1, np.int64))
        for tap in self.taps:
            chunk = cs * TEXT_ROWS_PER_SAMPLE if tap in STAGES_TEXT else cs
            row = self._row_shape(tap)
            self._new(tap, row, chunk, self.codec.dtype, self.codec.compressor())
            if self.codec.has_scale:
                self._new(f"{tap}_scale", row[:-1], chunk, np.float32, self.codec.compressor())

    # -- writing -----------------------------------------------------------------------------
    def _rows(self, tap: str, feats: dict, b: int) -> np.ndarray:
        x = np.asarray(feats[tap], dtype=np.float32)
        if tap in STAGES_TEXT:
            lengths = feats["_lengths"]
            if x.ndim != 3 or x.shape[0] != b or x.shape[2] != self.dims["text"]:
                raise ValueError(
                    f"{tap}: shape {x.shape}, expected ({b}, Lmax+1, {self.dims['text']})"
                )
            if lengths.max(initial=0) > x.shape[1]:
                raise ValueError(f"{tap}: text_lengths exceed the padded length {x.shape[1]}")
            return x[np.arange(x.shape[1])[None, :] < lengths[:, None]]
        want = (b, *self._row_shape(tap))
        if x.shape != want:
            raise ValueError(f"{tap}: shape {x.shape}, expected {want}")
        return x

    def append(self, keys: list[str], feats: dict[str, np.ndarray]) -> None:
        """Add a batch: ``keys`` (b,) and float features per tap (see the module docstring).

        Text stages come padded (b, Lmax+1, D) with ``feats["text_lengths"]`` (b,) = L+1; only
        the valid rows are stored. Inputs must be CPU arrays (torch: ``.float().cpu().numpy()``).
        """
        if self._done:
            raise RuntimeError(f"{self.name}: append after commit/abort")
        b = len(keys)
        unknown = set(feats) - set(self.taps) - {"text_lengths"}
        absent = set(self.taps) - set(feats)
        if unknown or absent:
            raise ValueError(f"{self.name}: feats keys {sorted(feats)} ≠ taps {list(self.taps)}")
        feats = dict(feats)
        has_text = any(t in STAGES_TEXT for t in self.taps)
        if has_text:
            lengths = np.asarray(feats["text_lengths"], dtype=np.int64).reshape(-1)
            if lengths.shape != (b,) or (b and lengths.min() < 1):
                raise ValueError(f"{self.name}: text_lengths must be (b,) ints >= 1")
            feats["_lengths"] = lengths
        rows = {tap: self._rows(tap, feats, b) for tap in self.taps}
        if not b:
            return
        if not self._calibrated:
            self._calibrate(rows)
        for tap, x in rows.items():
            bad = x.size - int(np.isfinite(x).sum())
            if bad:
                log.warning(
                    "%s: %s has %d non-finite values in batch at %d",
                    self.name,
                    tap,
                    bad,
                    self.count,
                )
            data, scale = self.codec.encode(x, self._chscale[tap])
            self._app[tap].append(data)
            if scale is not None:
                self._app[f"{tap}_scale"].append(scale)
        self._app["keys"].append(np.asarray([str(k) for k in keys], dtype=str))
        if has_text:
            ends = self.text_rows + np.cumsum(feats["_lengths"])
            self._app["text_offsets"].append(ends)
            self.text_rows = int(ends[-1])
        self.count += b

    def _calibrate(self, rows: dict[str, np.ndarray]) -> None:
        """Fix the shard's per-channel scales from its first batch (int "-channel" codecs)."""
        for tap, x in rows.items():
            scale = self.codec.calibrate(x)
            self._chscale[tap] = scale
            if scale is not None:
                arr = self.group.create_array(f"{tap}_chscale", shape=scale.shape, dtype=np.float32)
                arr[:] = scale
        self._calibrated = True

    def commit(self, missing: Iterable[str] = ()) -> int:
        """Flush, mark complete and publish the group; ``missing`` = keys the teacher skipped.

        Returns the number of samples stored.
        """
        if self._done:
            raise RuntimeError(f"{self.name}: already committed or aborted")
        for app in self._app.values():
            app.close()
        self.group.attrs.update(
            {"count": self.count, "text_rows": self.text_rows, "missing": [str(k) for k in missing]}
        )
        self.group.attrs["complete"] = True  # written last: the object-store visibility flag
        loc = self.store.loc
        if loc.local:
            trash = None
            if loc.exists(self.name):  # overwrite=True of a complete group
                trash = f"{TMP_PREFIX}{uuid.uuid4().hex}-{self.name}"
                loc.rename(self.name, trash)
            loc.rename(self._dir, self.name)
            if trash:
                loc.remove(trash)
        self._done = True
        return self.count

    def abort(self) -> None:
        """Drop everything written so far (nothing becomes visible)."""
        if not self._done:
            self._done = True
            self.store.loc.remove(self._dir)

    def __enter__(self) -> ShardGroupWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if not self._done:
            if exc_type is None:
                log.warning("%s: closed without commit(); discarding it", self.name)
            self.abort()


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------
def _read_manifest(loc: _Location) -> dict:
    text = loc.read_text(MANIFEST_NAME)
    where = loc.child(MANIFEST_NAME)
    if text is None:
        raise InputError(f"{where}: missing; {loc} is not a teacher store (run cache-teacher)")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err})") from None
    if manifest.get("format") != STORE_FORMAT:
        raise InputError(f"{where}: format {manifest.get('format')!r}, expected {STORE_FORMAT!r}")
    return manifest


class _ChunkStream:
    """Reads one array front to back a whole chunk at a time, handing out any number of rows."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.chunk = array.chunks[0]
        self.pos = 0
        self.buf = np.empty((0, *array.shape[1:]), array.dtype)
        self.off = 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.off == len(self.buf):
                self.buf = self.array[self.pos : self.pos + self.chunk]
                if not len(self.buf):
                    raise ValueError(f"{self.array.path}: ends before the rows its group counts")
                self.pos += len(self.buf)
                self.off = 0
            k = min(n, len(self.buf) - self.off)
            parts.append(self.buf[self.off : self.off + k])
            self.off += k
            n -= k
        if not parts:
            return self.buf[0:0]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _TapStream:
    """One tap of one group, decoded to float32 as it streams."""

    def __init__(self, group: zarr.Group, tap: str, codec: Codec) -> None:
        self.codec = codec
        self.data = _ChunkStream(group[tap])
        self.scale = _ChunkStream(group[f"{tap}_scale"]) if codec.has_scale else None
        # A shard committed with no samples was never calibrated and has no channel scales.
        chscale = f"{tap}_chscale"
        self.chscale = group[chscale][:] if codec.per_channel and chscale in group else None

    def take(self, n: int) -> np.ndarray:
        data = self.data.take(n)
        scale = self.scale.take(n) if self.scale else None
        return self.codec.decode(data, scale, self.chscale)


class TeacherStore:
    """Read side: lists complete shard groups and streams their targets in stored order."""

    def __init__(self, root: str | Path) -> None:
        self.loc = _Location(root)
        self.manifest = _read_manifest(self.loc)
        try:
            self.spec = StoreSpec.from_dict(self.manifest)
        except (TypeError, InputError) as err:
            raise InputError(f"{self.loc.child(MANIFEST_NAME)}: invalid spec ({err})") from None
        self.codec = parse_codec(self.spec.codec)

    @property
    def root(self) -> str:
        return self.loc.url

    def _attrs(self) -> dict[str, dict]:
        """Attributes of every group under a final (non-temporary) name."""
        out = {}
        for d in self.loc.dirs():
            if not d.startswith(TMP_PREFIX):
                attrs = _group_attrs(self.loc, d)
                if attrs is not None:
                    out[d] = attrs
        return out

    def shards(self) -> dict[str, int]:
        """Complete groups → sample counts, by name."""
        return {n: int(a["count"]) for n, a in self._attrs().items() if a.get("complete")}

    def _complete_attrs(self, name: str) -> dict:
        attrs = _group_attrs(self.loc, name)
        if not attrs or not attrs.get("complete"):
            raise InputError(
                f"{self.loc.child(name)}: no complete teacher group for this shard "
                "(not cached yet, or its caching was interrupted)"
            )
        return attrs

    def missing(self, name: str) -> list[str]:
        """Keys of the shard that the teacher could not process (e.g. undecodable images)."""
        return list(self._complete_attrs(name).get("missing", []))

    def check_compatible(self, expected: dict) -> None:
        """Raise InputError naming every manifest field that differs from `expected`.

        `expected` is a (nested, partial) manifest: only the keys it names are compared, e.g.
        ``{"charset": "36", "form": "normalised", "preprocessing": {"image_size": [32, 128]}}``.
        """
        diffs = _diff(self.manifest, _jsonable(expected))
        if diffs:
            raise InputError(
                f"{self.loc.child(MANIFEST_NAME)}: teacher store does not match the training "
                f"setup: {'; '.join(diffs)}"
            )

    def iter_chunks(self, name: str) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
        """Yield ``(keys, block)`` a storage chunk of samples at a time, in stored order.

        `block` holds float32 ``image_s*`` (B, N, D), ``text_emb`` (B, E), flattened ``text_s*``
        (T, D) and ``text_offsets`` (B+1,) starting at 0. Each chunk is read and decoded once.
        """
        attrs = self._complete_attrs(name)
        group = zarr.open_group(self.loc.child(name), mode="r")
        count = int(attrs["count"])
        keys = group["keys"][:].tolist()
        taps = self.spec.taps
        offsets = group["text_offsets"][:] if any(t in STAGES_TEXT for t in taps) else None
        streams = {tap: _TapStream(group, tap, self.codec) for tap in taps}
        step = int(attrs.get("chunk_samples", DEFAULT_CHUNK_SAMPLES))
        for a in range(0, count, step):
            b = min(a + step, count)
            block = {}
            for tap, stream in streams.items():
                n = int(offsets[b] - offsets[a]) if tap in STAGES_TEXT else b - a
                block[tap] = stream.take(n)
            if offsets is not None:
                block["text_offsets"] = offsets[a : b + 1] - offsets[a]
            yield keys[a:b], block

    def iter_shard(self, name: str) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Yield ``(key, targets)`` per sample in stored order; targets are float32 arrays
        ``image_s*`` (N, D), ``text_s*`` (L+1, D), ``text_emb`` (E,) — views into the decoded chunk.
        """
        for keys, block in self.iter_chunks(name):
            offsets = block.pop("text_offsets", None)
            for i, key in enumerate(keys):
                sample = {}
                for tap, arr in block.items():
                    sample[tap] = arr[offsets[i] : offsets[i + 1]] if tap in STAGES_TEXT else arr[i]
                yield key, sample

    def nbytes(self, name: str | None = None) -> int:
        """Bytes on storage of one group, or of the whole store (file sizes, not blocks)."""
        return self.loc.nbytes(name or "")

    # -- verification ------------------------------------------------------------------------
    def verify(self, shard_index: dict | None = None) -> dict:
        """Check every group; return a report (``ok``, per-shard problems, bytes/sample).

        With `shard_index` (``shards.json``, see `clipocr.pipeline.shards.load_index`) also checks
        that every listed shard is cached and that stored + missing counts match it. Never raises
        for a problem in the store: problems are listed in the report.
        """
        problems: list[str] = []
        groups: dict[str, dict] = {}
        stale = []
        for d in self.loc.dirs():
            if d.startswith(TMP_PREFIX):
                stale.append(d)
                continue
            attrs = _group_attrs(self.loc, d)
            if attrs is not None:
                groups[d] = attrs
        expected: dict[str, int] | None = None
        if shard_index is not None:
            expected = {shard_group_name(s["name"]): int(s["count"]) for s in shard_index["shards"]}
            if shard_index.get("charset", self.spec.charset) != self.spec.charset:
                theirs = shard_index["charset"]
                problems.append(f"charset: store {self.spec.charset!r} != shards.json {theirs!r}")
            for name in expected:
                if name not in groups:
                    problems.append(f"{name}: listed in shards.json but not in the store")
        shards = {}
        for name, attrs in groups.items():
            want = None if expected is None else expected.get(name)
            rep = self._verify_group(name, attrs, want)
            if expected is not None and name not in expected:
                rep["problems"].append("not listed in shards.json")
            shards[name] = rep
            problems += [f"{name}: {p}" for p in rep["problems"]]
        num = sum(r["count"] for r in shards.values() if r["complete"])
        total = sum(r["nbytes"] for r in shards.values() if r["complete"])
        return {
            "ok": not problems,
            "root": self.root,
            "codec": self.spec.codec,
            "form": self.spec.form,
            "num_shards": sum(r["complete"] for r in shards.values()),
            "num_samples": num,
            "nbytes": total,
            "bytes_per_sample": total / num if num else None,
            "shards": shards,
            "stale_temporary_groups": stale,
            "problems": problems,
        }

    def _verify_group(self, name: str, attrs: dict, expected: int | None) -> dict:
        rep: dict[str, Any] = {
            "complete": bool(attrs.get("complete")),
            "count": int(attrs.get("count", 0)),
            "expected": expected,
            "missing": len(attrs.get("missing", [])),
            "nbytes": self.nbytes(name),
            "problems": [],
        }
        probs = rep["problems"]
        if not rep["complete"]:
            probs.append("incomplete (writer did not finish)")
            return rep
        try:
            self._check_group(name, attrs, rep)
        except Exception as err:  # any unreadable part is a finding, not a crash
            probs.append(f"unreadable: {type(err).__name__}: {err}")
        return rep

    def _check_group(self, name: str, attrs: dict, rep: dict) -> None:
        probs = rep["problems"]
        count, missing = rep["count"], list(attrs.get("missing", []))
        if rep["expected"] is not None and count + len(missing) != rep["expected"]:
            probs.append(
                f"count {count} + {len(missing)} missing != {rep['expected']} in shards.json"
            )
        group = zarr.open_group(self.loc.child(name), mode="r")
        keys = group["keys"][:].tolist()
        readable = len(keys) == count  # the arrays fit together, so the data can be scanned
        if not readable:
            probs.append(f"keys: {len(keys)} stored, count says {count}")
        if len(set(keys)) != len(keys):
            probs.append("keys: duplicates")
        if any(not k.startswith(f"{name}/") for k in keys):
            probs.append(f"keys: some do not start with {name}/")
        if set(keys) & set(missing):
            probs.append("keys: some are also listed as missing")
        dims = self.spec.dims
        shapes = {}
        for tap in self.spec.taps:
            if tap in STAGES_TEXT:
                shapes[tap] = (int(attrs.get("text_rows", -1)), dims["text"])
            elif tap in STAGES_IMAGE:
                shapes[tap] = (count, dims["image_tokens"], dims["image"])
            else:
                shapes[tap] = (count, dims["emb"])
            if self.codec.has_scale:
                shapes[f"{tap}_scale"] = shapes[tap][:-1]
        if any(t in STAGES_TEXT for t in self.spec.taps):
            offsets = group["text_offsets"][:]
            rows = int(attrs.get("text_rows", -1))
            if offsets.shape != (count + 1,) or offsets[0] != 0 or offsets[-1] != rows:
                readable = False
                probs.append(
                    f"text_offsets: shape {offsets.shape} or its ends do not fit {count} samples, "
                    f"{rows} rows"
                )
            elif np.any(np.diff(offsets) < 1):
                probs.append("text_offsets: a sample has no text rows")
        for arr_name, shape in shapes.items():
            got = tuple(group[arr_name].shape)
            if got != shape:
                readable = False
                probs.append(f"{arr_name}: shape {got}, expected {shape}")
        if not readable:
            return
        bad: dict[str, int] = {}
        for _, block in self.iter_chunks(name):
            for tap in self.spec.taps:
                n = int(block[tap].size - np.isfinite(block[tap]).sum())
                if n:
                    bad[tap] = bad.get(tap, 0) + n
        for tap, n in bad.items():
            probs.append(f"{tap}: {n} NaN/Inf values")


def format_verify_report(report: dict) -> str:
    """A short human-readable summary of `TeacherStore.verify`'s report."""
    bps = report["bytes_per_sample"]
    lines = [
        f"{report['root']}: {report['num_shards']} complete shard(s), {report['num_samples']} "
        f"samples, {report['nbytes'] / 1e6:.1f} MB"
        + (f", {bps / 1e3:.1f} KB/sample" if bps else "")
        + f" (codec {report['codec']}, form {report['form']})"
    ]
    if report["stale_temporary_groups"]:
        lines.append(
            f"{len(report['stale_temporary_groups'])} leftover temporary group(s), ignored"
        )
    lines += [f"PROBLEM {p}" for p in report["problems"]]
    lines.append("OK" if report["ok"] else f"FAILED: {len(report['problems'])} problem(s)")
    return "\n".join(lines)
