"""What every reader of a store shares: its manifest, its groups and their arrays, checked.

`StoreView` is the base of `reader.TeacherStore` (which adds the text table and the per-sample
streams) and what `verify` works on, so that neither of those two modules imports the other.

It checks as it goes what it can check cheaply: before streaming a group, that each array has
the shape its counts give and all its chunk files (a missing chunk would read as zeros); while
streaming, every chunk's CRC32C (Zarr checks it on decoding). Any failure is an InputError
naming the group and array, never values that are silently wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store.codecs import parse_codec
from clipocr.pipeline.teacher_store.integrity import array_problems, expected_shapes
from clipocr.pipeline.teacher_store.location import TMP_PREFIX, Location, group_attrs
from clipocr.pipeline.teacher_store.sources import SOURCE_ATTR, compare
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
    view_tap,
)
from clipocr.pipeline.teacher_store.streams import ChunkStream, TapStream


class StoreView:
    """A store opened for reading: manifest, spec, codec, and its complete groups."""

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

    def group_taps(self) -> tuple[str, ...]:
        """The taps stored in the shard groups (the table layout keeps text in the table)."""
        if self.spec.text_layout == "table":
            return tuple(t for t in self.spec.taps if t in STAGES_IMAGE)
        return self.spec.taps

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

    def complete_attrs(self, name: str) -> dict:
        attrs = group_attrs(self.loc, name)
        if not attrs or not attrs.get("complete"):
            raise InputError(
                f"{self.loc.child(name)}: no complete teacher group for this shard "
                "(not cached yet, or its caching was interrupted)"
            )
        return attrs

    def missing(self, name: str) -> list[str]:
        """Keys of the shard that the teacher could not process (e.g. undecodable images)."""
        return list(self.complete_attrs(name).get("missing", []))

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

    def open_group(self, name: str, attrs: dict) -> zarr.Group:
        """A complete group, opened after checking that its arrays hold what its attributes
        count, in chunk files all present (InputError naming what is not)."""
        where = self.loc.child(name)
        try:
            group = zarr.open_group(where, mode="r")
            shapes = expected_shapes(
                self.spec.taps, self.spec.dims, self.codec, int(attrs["count"]),
                int(attrs.get("text_rows", 0)), self.spec.text_layout, self.spec.view_count,
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

    def check_view(self, view: int) -> None:
        if not 0 <= view < self.spec.view_count:
            raise InputError(
                f"{self.loc.child(MANIFEST_NAME)}: view {view} asked for, the store caches "
                f"{self.spec.view_count} view(s) per sample (0..{self.spec.view_count - 1})"
            )

    def tap_array(self, tap: str, view: int) -> str:
        """The array a group stores `tap` of cached view `view` in (`spec.view_tap`)."""
        return view_tap(tap, view) if tap in STAGES_IMAGE else tap

    def iter_group_chunks(
        self, name: str, view: int = 0
    ) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
        """Yield ``(keys, block)`` a storage chunk of samples at a time from the group's own
        arrays, decoded to float32: the group's taps (image taps of cached view `view`, under
        their own names), ``text_offsets`` (B+1,) from 0 for ragged text, ``text_ref`` (B, 2)
        in the table layout. Each chunk is read and decoded once."""
        self.check_view(view)
        attrs = self.complete_attrs(name)
        where = self.loc.child(name)
        group = self.open_group(name, attrs)
        count = int(attrs["count"])
        taps = self.group_taps()
        refs = None
        if self.spec.text_layout == "table" and len(taps) < len(self.spec.taps):
            refs = ChunkStream(group["text_ref"], f"{where}/text_ref").take(count)
        keys = ChunkStream(group["keys"], f"{where}/keys").take(count).tolist()
        offsets = None
        if any(t in STAGES_TEXT for t in taps):
            offsets = ChunkStream(group["text_offsets"], f"{where}/text_offsets").take(count + 1)
        streams = {tap: TapStream(group, self.tap_array(tap, view), self.codec, where)
                   for tap in taps}  # fmt: skip
        step = int(attrs.get("chunk_samples", DEFAULT_CHUNK_SAMPLES))
        for a in range(0, count, step):
            b = min(a + step, count)
            block = {}
            for tap, stream in streams.items():
                n = int(offsets[b] - offsets[a]) if tap in STAGES_TEXT else b - a
                block[tap] = stream.take_float32(n)
            if offsets is not None:
                block["text_offsets"] = offsets[a : b + 1] - offsets[a]
            if refs is not None:
                block["text_ref"] = refs[a:b]
            yield keys[a:b], block

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
            recorded = attrs.get(SOURCE_ATTR)
            if recorded is None:
                unrecorded.append(shard_group_name(path))
            elif (why := compare(recorded, path, thorough)) is not None:
                problems.append(why)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise InputError(
                f"{self.root}: teacher store was cached from other shards than {shard_dir}: "
                f"{'; '.join(problems[:3])}{more}"
            )
        return unrecorded

    def nbytes(self, name: str | None = None) -> int:
        """Bytes on storage of one group, or of the whole store (file sizes, not blocks)."""
        return self.loc.nbytes(name or "")
