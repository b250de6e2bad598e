"""Group integrity: counted shapes, chunk files on storage, checksummed chunks."""

from __future__ import annotations

from pathlib import Path

import zarr
from store_helpers import DIMS, SHARD, spec, write_shard

from clipocr.pipeline.teacher_store import ALL_TAPS, parse_codec
from clipocr.pipeline.teacher_store.integrity import (
    array_problems,
    expected_shapes,
    has_checksums,
    unchecksummed,
)


def test_expected_shapes_follow_the_counts() -> None:
    shapes = expected_shapes(ALL_TAPS, DIMS, parse_codec("int8-channel"), 5, 17)
    assert shapes["keys"] == (5,) and shapes["text_offsets"] == (6,)
    assert shapes["image_s1"] == (5, 3, 16) and shapes["image_s1_scale"] == (5, 3)
    assert shapes["text_s2"] == (17, 8) and shapes["text_emb_chscale"] == (8,)
    assert "text_emb_chscale" not in expected_shapes(ALL_TAPS, DIMS, parse_codec("int8-channel"),
                                                      0, 0)  # fmt: skip


def test_array_problems_sees_shape_and_missing_chunks(tmp_path: Path) -> None:
    write_shard(tmp_path / "s", spec(), [9])
    group = zarr.open_group(str(tmp_path / "s" / SHARD), mode="r")
    rows = int(group.attrs["text_rows"])
    shapes = expected_shapes(ALL_TAPS, DIMS, parse_codec("zstd"), 9, rows)
    assert array_problems(group, shapes) == []
    assert all(has_checksums(group[n]) for n in shapes) and unchecksummed(group, list(shapes)) == []
    assert array_problems(group, shapes | {"image_s1": (10, 3, 16)}) == [
        "image_s1: shape (9, 3, 16), expected (10, 3, 16)"
    ]
    (tmp_path / "s" / SHARD / "text_emb" / "c" / "2" / "0").unlink()
    assert array_problems(group, shapes) == [
        "text_emb: 2 of 3 chunk files stored (missing chunks read as zeros)"
    ]
