"""Collecting the labels to put in the text table: every shard's labels read from its members
alone, by groups of shards, a bad shard reported by name while the others still count."""

from __future__ import annotations

import tarfile
from pathlib import Path

from conftest import WORDS, make_shards

from clipocr.cache_teacher.label_table import labels_of_shards, shard_labels
from clipocr.pipeline.shards import shard_paths


def test_labels_match_tarfile_and_groups_report_bad_shards(tmp_path: Path) -> None:
    paths = shard_paths(make_shards(tmp_path, WORDS + ["hello"], shard_size=8))
    with tarfile.open(paths[0]) as tar:
        want = {m.name[:-4]: tar.extractfile(m).read().decode() for m in tar
                if m.name.endswith(".txt")}  # fmt: skip
    assert shard_labels(paths[0]) == want
    bad = tmp_path / "shards" / "shard-000009.tar"
    bad.write_bytes(paths[1].read_bytes()[:700])  # cut inside a member
    found = labels_of_shards([str(p) for p in (*paths, bad)])
    assert sorted(found.labels()) == sorted(set(WORDS))
    assert list(found.bad) == ["shard-000009.tar"] and "truncated" in found.bad["shard-000009.tar"]
