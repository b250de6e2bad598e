"""The label index: first part wins, lookups by batch, kept per process and extended (not
rebuilt) when a later run appends a part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from store_helpers import POSITIONS, spec, table_feats, write_table_store

from clipocr.pipeline.teacher_store import TeacherStoreWriter, open_table_part
from clipocr.pipeline.teacher_store.location import Location
from clipocr.pipeline.teacher_store.table_parts import LabelIndex, label_index


def test_lookup_first_part_wins_and_missing_labels() -> None:
    index = LabelIndex.build([(0, ["cat", "ab"]), (1, ["zebra", "cat", "héllo"])])
    assert index.as_dict() == {"ab": (0, 1), "cat": (0, 0), "héllo": (1, 2), "zebra": (1, 0)}
    refs, found = index.lookup(["zebra", "nope", "ab"])
    assert found.tolist() == [True, False, True]
    assert refs.tolist() == [[1, 0], [-1, -1], [0, 1]]
    assert index.missing(["a", "ab", "zz"]) == ["a", "zz"] and "cat" in index
    assert LabelIndex.build([]).missing(["x"]) == ["x"]
    longer = index.extended([(2, ["cat", "a-much-longer-label"])])
    assert longer.get("a-much-longer-label") == (2, 1) and longer.get("cat") == (0, 0)


def test_kept_per_process_and_extended_by_new_parts(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "s"
    write_table_store(root, {"shard-000000": ["ab", "cat"]})
    loc = Location(root)
    builds = []
    real = LabelIndex.build.__func__
    monkeypatch.setattr(LabelIndex, "build",
                        classmethod(lambda cls, parts: (builds.append(len(parts)),
                                                        real(cls, parts))[1]))  # fmt: skip
    first = label_index(loc)  # built when the shard above was written
    assert label_index(Location(root)) is first and builds == []  # no rebuild per task
    writer = TeacherStoreWriter(root, spec(text_layout="table"))
    with open_table_part(writer, POSITIONS, 2) as part:
        part.append(["cat", "dog"], table_feats(np.random.default_rng(1), ["cat", "dog"]))
        part.commit()
    later = label_index(loc)
    assert later.as_dict() == {"ab": (0, 0), "cat": (0, 1), "dog": (1, 1)}
    assert builds == [1]  # the new part alone
