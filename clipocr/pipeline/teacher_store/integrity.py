"""What a sound group holds: every array at its counted length, every chunk file present, and
every chunk checksummed — checked by the writer before it publishes and by the reader and
`TeacherStore.verify` after.

Zarr reads a chunk whose file is absent as the fill value, so a deleted (or never written) chunk
would decode as plausible zeros; hence chunks are counted on storage, not assumed. Arrays are
created with ``write_empty_chunks`` so that even an all-zero chunk is a file, and every new
array ends its codec chain with a CRC32C checksum (Zarr's ``crc32c`` codec, verified by Zarr on
every read), so a flipped byte in a chunk is an error instead of a changed value. Stores written
before checksums existed stay readable; `has_checksums` tells them apart.
"""

from __future__ import annotations

from typing import Any

import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from clipocr.pipeline.teacher_store.codecs import Codec
from clipocr.pipeline.teacher_store.spec import STAGES_IMAGE, STAGES_TEXT, view_tap

# Zarr's default compressor for the index arrays (keys, text_offsets), made explicit so the
# checksum can follow it.
INDEX_COMPRESSOR = ZstdCodec(level=0)
ARRAY_CONFIG = {"write_empty_chunks": True}


def checksummed(*compressors: Any) -> tuple:
    """A compressor chain that ends with a per-chunk CRC32C."""
    return (*compressors, Crc32cCodec())


def has_checksums(array: zarr.Array) -> bool:
    return any(isinstance(c, Crc32cCodec) for c in array.compressors)


def expected_shapes(
    taps: tuple[str, ...],
    dims: dict,
    codec: Codec,
    count: int,
    text_rows: int,
    text_layout: str = "ragged",
    views: int = 1,
) -> dict[str, tuple[int, ...]]:
    """Array name → the shape a shard group of `count` samples and (ragged layout) `text_rows`
    text rows must have. In the ``table`` layout a group holds the image taps and ``text_ref``
    (count, 2) = (table part, row) per sample; the text taps live in the table (`table_shapes`).
    With `views` > 1 each image tap has one array per view (`spec.view_tap`), alike."""
    shapes: dict[str, tuple[int, ...]] = {"keys": (count,)}
    if text_layout == "table":
        if any(t not in STAGES_IMAGE for t in taps):
            shapes["text_ref"] = (count, 2)
        taps = tuple(t for t in taps if t in STAGES_IMAGE)
    elif any(t in STAGES_TEXT for t in taps):
        shapes["text_offsets"] = (count + 1,)
    shapes |= _tap_shapes(taps, dims, codec, count, text_rows)
    for tap in (t for t in taps if t in STAGES_IMAGE):
        own = _tap_shapes((tap,), dims, codec, count, text_rows)  # the tap, its scales
        for v in range(1, views):
            shapes |= {view_tap(tap, v) + name[len(tap) :]: shape for name, shape in own.items()}
    return shapes


def table_shapes(
    taps: tuple[str, ...], dims: dict, codec: Codec, count: int, positions: int
) -> dict[str, tuple[int, ...]]:
    """Array name → shape for a text-table part of `count` labels: ``labels`` (count,), every
    text tap at all `positions` of the text tower ``(count, positions, D)``, ``text_emb``."""
    text_taps = tuple(t for t in taps if t not in STAGES_IMAGE)
    return {"labels": (count,)} | _tap_shapes(text_taps, dims, codec, count, 0, positions)


def _tap_shapes(
    taps: tuple[str, ...],
    dims: dict,
    codec: Codec,
    count: int,
    text_rows: int,
    positions: int | None = None,
) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for tap in taps:
        if tap in STAGES_TEXT:
            if positions is None:
                shapes[tap] = (text_rows, dims["text"])
            else:
                shapes[tap] = (count, positions, dims["text"])
        elif tap in STAGES_IMAGE:
            shapes[tap] = (count, dims["image_tokens"], dims["image"])
        else:
            shapes[tap] = (count, dims["emb"])
        if codec.has_scale:
            shapes[f"{tap}_scale"] = shapes[tap][:-1]
        if codec.per_channel and count:  # an empty shard was never calibrated
            shapes[f"{tap}_chscale"] = shapes[tap][-1:]
    return shapes


def chunks_stored(array: zarr.Array) -> tuple[int, int]:
    """(chunk files on storage, chunks the array's shape needs)."""
    return int(array.nchunks_initialized), int(array.nchunks)


def array_problems(group: zarr.Group, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Every array of `shapes` present, at its shape, with all its chunk files; problems found."""
    probs = []
    present = set(group.array_keys())
    for name, shape in shapes.items():
        if name not in present:
            probs.append(f"{name}: array absent")
            continue
        arr = group[name]
        if tuple(arr.shape) != shape:
            probs.append(f"{name}: shape {tuple(arr.shape)}, expected {shape}")
            continue
        stored, need = chunks_stored(arr)
        if stored != need:
            probs.append(
                f"{name}: {stored} of {need} chunk files stored (missing chunks read as zeros)"
            )
    return probs


def unchecksummed(group: zarr.Group, names: list[str]) -> list[str]:
    """The arrays among `names` whose chunks carry no checksum (stores written before them)."""
    present = set(group.array_keys())
    return [n for n in names if n in present and not has_checksums(group[n])]
