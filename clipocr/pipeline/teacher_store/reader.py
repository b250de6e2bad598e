"""Read side: `TeacherStore` lists complete groups, streams their targets, and verifies them.

Reading (`TeacherStore.iter_shard`, `iter_chunks`) streams a group front to back, reading and
decoding every chunk exactly once: no per-sample random access. Samples the teacher could not
process (undecodable images) are absent from the arrays and listed in the ``missing`` attribute.
`TeacherStore.verify` checks every group against its counts, its shapes and (optionally)
``shards.json``, and lists problems instead of raising; `format_verify_report` prints them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store.codecs import Codec, parse_codec
from clipocr.pipeline.teacher_store.location import TMP_PREFIX, Location, group_attrs
from clipocr.pipeline.teacher_store.spec import (
    DEFAULT_CHUNK_SAMPLES,
    MANIFEST_NAME,
    STAGES_IMAGE,
    STAGES_TEXT,
    StoreSpec,
    diff_fields,
    jsonable,
    read_manifest,
    shard_group_name,
)


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
        self.loc = Location(root)
        self.manifest = read_manifest(self.loc)
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
                attrs = group_attrs(self.loc, d)
                if attrs is not None:
                    out[d] = attrs
        return out

    def shards(self) -> dict[str, int]:
        """Complete groups → sample counts, by name."""
        return {n: int(a["count"]) for n, a in self._attrs().items() if a.get("complete")}

    def _complete_attrs(self, name: str) -> dict:
        attrs = group_attrs(self.loc, name)
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
        diffs = diff_fields(self.manifest, jsonable(expected))
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
            attrs = group_attrs(self.loc, d)
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
