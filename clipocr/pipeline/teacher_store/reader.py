"""Read side: `TeacherStore` lists complete groups, streams their targets, and verifies them.

Reading (`TeacherStore.iter_shard`, `iter_chunks`) streams a group front to back, reading and
decoding every chunk exactly once: no per-sample random access. Samples the teacher could not
process (undecodable images) are absent from the arrays and listed in the ``missing`` attribute.
In the ``table`` text layout each sample's text taps come from the store's text table
(`text_table.TextTable`, read whole once per part), so the per-sample API is the same for both
layouts; ``text_pad="align"`` returns every position of the text tower instead of L + 1 rows.

Reading checks as it goes what it can check cheaply: before streaming a group, that each array
has the shape its counts give and all its chunk files (a missing chunk would read as zeros);
while streaming, every chunk's CRC32C (Zarr checks it on decoding). Any failure is an InputError
naming the group and array, never values that are silently wrong. `check_sources` compares the
source shards a store was cached from with the ones given. `TeacherStore.verify` (module
`verify`) checks everything and lists problems instead of raising.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import sources
from clipocr.pipeline.teacher_store.codecs import Codec, parse_codec
from clipocr.pipeline.teacher_store.integrity import array_problems, expected_shapes
from clipocr.pipeline.teacher_store.location import TMP_PREFIX, Location, group_attrs
from clipocr.pipeline.teacher_store.spec import (
    DEFAULT_CHUNK_SAMPLES,
    MANIFEST_NAME,
    STAGES_IMAGE,
    STAGES_TEXT,
    TEXT_PADS,
    StoreSpec,
    diff_fields,
    jsonable,
    read_manifest,
    shard_group_name,
)
from clipocr.pipeline.teacher_store.text_table import TextTable
from clipocr.pipeline.teacher_store.verify import verify_store


class _ChunkStream:
    """Reads one array front to back a whole chunk at a time, handing out any number of rows."""

    def __init__(self, array: zarr.Array, where: str) -> None:
        self.array = array
        self.where = where
        self.chunk = array.chunks[0]
        self.pos = 0
        self.buf = np.empty((0, *array.shape[1:]), array.dtype)
        self.off = 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.off == len(self.buf):
                self.buf = self._read()
                if not len(self.buf):
                    raise InputError(f"{self.where}: ends before the rows its group counts")
                self.pos += len(self.buf)
                self.off = 0
            k = min(n, len(self.buf) - self.off)
            parts.append(self.buf[self.off : self.off + k])
            self.off += k
            n -= k
        if not parts:
            return self.buf[0:0]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _read(self) -> np.ndarray:
        try:
            return self.array[self.pos : self.pos + self.chunk]
        except Exception as err:  # checksum mismatch, codec error, I/O error
            raise InputError(
                f"{self.where}: chunk {self.pos // self.chunk} unreadable ({type(err).__name__}: "
                f"{err}); the store is damaged: delete this group and rerun cache-teacher"
            ) from None


class _TapStream:
    """One tap of one group, decoded to float32 as it streams."""

    def __init__(self, group: zarr.Group, tap: str, codec: Codec, where: str) -> None:
        self.codec = codec
        self.data = _ChunkStream(group[tap], f"{where}/{tap}")
        scale = f"{tap}_scale"
        self.scale = _ChunkStream(group[scale], f"{where}/{scale}") if codec.has_scale else None
        # A shard committed with no samples was never calibrated and has no channel scales.
        chscale = f"{tap}_chscale"
        self.chscale = group[chscale][:] if codec.per_channel and chscale in group else None

    def take(self, n: int) -> np.ndarray:
        data = self.data.take(n)
        scale = self.scale.take(n) if self.scale else None
        return self.codec.decode(data, scale, self.chscale)


# The per-sample entry holding the label a table-layout sample's text targets were made for.
TEXT_LABEL = "text_label"


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
        self._tables: dict[bool, TextTable] = {}

    def text_table(self, all_rows: bool = False) -> TextTable:
        """The store's text table (``table`` layout), kept once read."""
        if all_rows not in self._tables:
            self._tables[all_rows] = TextTable(self.loc, self.spec.taps, self.codec, all_rows)
        return self._tables[all_rows]

    def check_text_pad(self, text_pad: str) -> None:
        """InputError unless this store can give text targets for `text_pad`."""
        if text_pad not in TEXT_PADS:
            raise InputError(f"text pad {text_pad!r}: expected one of {', '.join(TEXT_PADS)}")
        if text_pad == "align" and self.spec.text_pad != "align":
            raise InputError(
                f"{self.loc.child(MANIFEST_NAME)}: text pad align needs the pad-token features, "
                f"and this store was cached with text layout {self.spec.text_layout} / pad "
                f"{self.spec.text_pad}; re-cache with `clipocr cache-teacher --text-pad align`"
            )

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

    def iter_chunks(
        self, name: str, text_pad: str = "masked"
    ) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
        """Yield ``(keys, block)`` a storage chunk of samples at a time, in stored order.

        `block` holds float32 ``image_s*`` (B, N, D), ``text_emb`` (B, E), flattened ``text_s*``
        (T, D) and ``text_offsets`` (B+1,) starting at 0; a table-layout store adds
        ``text_label`` (B,), the label each sample's text rows belong to. Each chunk is read and
        decoded once. ``text_pad="align"``: every position (c1..cL, EOT, pad…) per sample instead
        of the L + 1 rows up to EOT (stores cached with ``--text-pad align`` only).
        """
        self.check_text_pad(text_pad)
        attrs = self._complete_attrs(name)
        where = self.loc.child(name)
        group = self.open_group(name, attrs)
        count = int(attrs["count"])
        table = self.spec.text_layout == "table"
        taps = tuple(t for t in self.spec.taps if t in STAGES_IMAGE) if table else self.spec.taps
        refs = None
        if table and len(taps) < len(self.spec.taps):
            refs = _ChunkStream(group["text_ref"], f"{where}/text_ref").take(count)
        keys = _ChunkStream(group["keys"], f"{where}/keys").take(count).tolist()
        offsets = None
        if any(t in STAGES_TEXT for t in taps):
            offsets = _ChunkStream(group["text_offsets"], f"{where}/text_offsets").take(count + 1)
        streams = {tap: _TapStream(group, tap, self.codec, where) for tap in taps}
        step = int(attrs.get("chunk_samples", DEFAULT_CHUNK_SAMPLES))
        for a in range(0, count, step):
            b = min(a + step, count)
            block = {}
            for tap, stream in streams.items():
                n = int(offsets[b] - offsets[a]) if tap in STAGES_TEXT else b - a
                block[tap] = stream.take(n)
            if offsets is not None:
                block["text_offsets"] = offsets[a : b + 1] - offsets[a]
            if refs is not None:
                labels, text = self.text_table(text_pad == "align").gather(refs[a:b])
                block |= text
                block[TEXT_LABEL] = np.asarray(labels, dtype=str)
            yield keys[a:b], block

    def iter_shard(
        self, name: str, text_pad: str = "masked"
    ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Yield ``(key, targets)`` per sample in stored order; targets are float32 arrays
        ``image_s*`` (N, D), ``text_s*`` (L+1, D) — (P, D), every position, with
        ``text_pad="align"`` — and ``text_emb`` (E,): views into the decoded chunk; plus
        ``text_label`` in the table layout (see `iter_chunks`).
        """
        for keys, block in self.iter_chunks(name, text_pad):
            offsets = block.pop("text_offsets", None)
            for i, key in enumerate(keys):
                sample = {}
                for tap, arr in block.items():
                    sample[tap] = arr[offsets[i] : offsets[i + 1]] if tap in STAGES_TEXT else arr[i]
                yield key, sample

    def open_group(self, name: str, attrs: dict) -> zarr.Group:
        """A complete group, opened after checking that its arrays hold what its attributes
        count, in chunk files all present (InputError naming what is not)."""
        where = self.loc.child(name)
        try:
            group = zarr.open_group(where, mode="r")
            shapes = expected_shapes(
                self.spec.taps, self.spec.dims, self.codec, int(attrs["count"]),
                int(attrs.get("text_rows", 0)), self.spec.text_layout,
            )  # fmt: skip
            problems = array_problems(group, shapes)
        except Exception as err:  # metadata deleted or garbled
            problems = [f"unreadable ({type(err).__name__}: {err})"]
        if problems:
            raise InputError(
                f"{where}: teacher group does not hold what its manifest and counts say: "
                f"{'; '.join(problems)}; the store is damaged or was edited: delete this group "
                "(or the store) and rerun cache-teacher"
            )
        return group

    def check_sources(self, shard_dir: str | Path, thorough: bool = False) -> list[str]:
        """Raise InputError unless each shard of `shard_dir` that has a group here is the file
        the group was cached from (`sources`: quick by default, every byte with `thorough`).

        Returns the names of groups that recorded no source digest (stores cached before
        digests existed), which cannot be checked.
        """
        shard_dir = Path(shard_dir)
        groups = self._attrs()
        problems, unrecorded = [], []
        for path in sorted(shard_dir.glob("*.tar")):
            attrs = groups.get(shard_group_name(path))
            if not attrs or not attrs.get("complete"):
                continue
            recorded = attrs.get(sources.SOURCE_ATTR)
            if recorded is None:
                unrecorded.append(shard_group_name(path))
            elif (why := sources.compare(recorded, path, thorough)) is not None:
                problems.append(why)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise InputError(
                f"{self.root}: teacher store was cached from other shards than {shard_dir}: "
                f"{'; '.join(problems[:3])}{more}"
            )
        return unrecorded

    def verify(self, shard_index: dict | None = None, shard_dir: str | Path | None = None) -> dict:
        """Check every group; return a report (``ok``, per-shard problems, bytes/sample).

        See `verify.verify_store`; never raises for a problem in the store.
        """
        return verify_store(self, shard_index, shard_dir)

    def nbytes(self, name: str | None = None) -> int:
        """Bytes on storage of one group, or of the whole store (file sizes, not blocks)."""
        return self.loc.nbytes(name or "")
