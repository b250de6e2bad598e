"""Fill the store's text table: the text tower once per distinct label (DESIGN §5, issue 14).

Before the shard tasks of a ``table``-layout store start, the driver collects the labels of the
shards to cache (`labels_of_shards`, a task per group of shards, reading only the tars' members
with the shard reader of `pipeline.tar_stream`), keeps those the table lacks, and one task runs
the text tower on them in batches into a new immutable table part (`write_text_table`). Shard
tasks then only read the table (their samples' references, from the labels that come with each
decoded batch), so no two writers ever share a chunk.

Cost (issue 22): `tarfile` took 0.156 ms per sample for this pass, and every shard task read its
shard's labels again (0.14 ms per sample); the pass now parses headers with the shard reader's
own parser, and the shard tasks take each batch's labels from the decoded batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipocr.cache_teacher.teacher import Teacher
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.precision import autocast
from clipocr.pipeline.tar_stream import iter_tar_samples
from clipocr.pipeline.teacher_store import TeacherStoreWriter, open_table_part, parse_codec

# Labels per text-tower batch: the tower alone at context 27 is cheap per label.
TABLE_BATCH = 1024


def shard_labels(path: str | Path) -> dict[str, str]:
    """Key → label of every sample of a tar shard, in shard order (samples without a label are
    left out; the shard reader refuses them when the shard is cached)."""
    out: dict[str, str] = {}
    try:
        for key, parts in iter_tar_samples(path):
            if "txt" in parts:
                out[key] = parts["txt"].decode("utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise InputError(f"{path}: cannot read the shard's labels ({err})") from None
    return out


def distinct_labels(path: str | Path) -> set[str]:
    """The distinct labels of one shard."""
    return set(shard_labels(path).values())


@dataclass
class ShardLabels:
    """What a label-collecting task returns for a group of shards: their distinct labels as one
    newline-joined string (labels hold no whitespace; one string pickles and unpickles far
    faster than thousands of small ones, and the driver holds one per task, not a set per
    shard), and the shards that could not be read, file name → reason."""

    joined: str = ""
    bad: dict[str, str] = field(default_factory=dict)

    def labels(self) -> list[str]:
        return self.joined.split("\n") if self.joined else []


def labels_of_shards(paths: list[str]) -> ShardLabels:
    """One task: the distinct labels of the shards at `paths` (a bad shard is reported, the
    others still counted)."""
    labels: set[str] = set()
    out = ShardLabels()
    for path in paths:
        try:
            found = distinct_labels(path)
        except InputError as err:
            out.bad[Path(path).name] = str(err)
            continue
        if any("\n" in s for s in found):
            out.bad[Path(path).name] = f"{path}: a label holds a line break; re-create the shard"
            continue
        labels |= found
    out.joined = "\n".join(sorted(labels))
    return out


def write_text_table(
    teacher: Teacher,
    writer: TeacherStoreWriter,
    labels: list[str],
    precision: str = "auto",
    batch_size: int = TABLE_BATCH,
) -> int:
    """Run the text tower on `labels` and publish them as one new part of `writer`'s table
    (none when `labels` is empty); returns the part's number, or -1."""
    if not labels:
        return -1
    device = next(teacher.parameters()).device
    as_half = parse_codec(writer.spec.codec).lossless  # lossy codecs quantise from float32
    pad = writer.spec.text_pad
    with open_table_part(writer, teacher.text_positions, len(labels)) as part:
        for start in range(0, len(labels), batch_size):
            chunk = labels[start : start + batch_size]
            with autocast(precision, device):
                feats = teacher.table_features(chunk, pad)
            part.append(chunk, {k: _host(v, as_half) for k, v in feats.items()})
        return part.commit()


def _host(t: torch.Tensor, as_half: bool) -> object:
    return (t.half() if as_half else t.float()).cpu().numpy()
