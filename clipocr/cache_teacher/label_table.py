"""Fill the store's text table: the text tower once per distinct label (DESIGN §5, issue 14).

Before the shard tasks of a ``table``-layout store start, the driver collects the labels of the
shards to cache (`shard_labels` reads only the tars' ``.txt`` members: the images are skipped
over, not read), keeps those the table lacks, and one task runs the text tower on them in
batches into a new immutable table part (`write_text_table`). Shard tasks then only read the
table (their samples' references), so no two writers ever share a chunk.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import torch

from clipocr.cache_teacher.teacher import Teacher
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.precision import autocast
from clipocr.pipeline.teacher_store import TeacherStoreWriter, open_table_part, parse_codec

# webdataset's key of a member: its path up to the first dot of the file name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# Labels per text-tower batch: the tower alone at context 27 is cheap per label.
TABLE_BATCH = 1024


def shard_labels(path: str | Path) -> dict[str, str]:
    """Key → label of every sample of a tar shard, from its ``.txt`` members alone."""
    out: dict[str, str] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:  # seekable: skips over image bytes
            for member in tar:
                m = _KEY_EXT.match(member.name)
                if member.isfile() and m and m[2] == "txt":
                    data = tar.extractfile(member)
                    out[m[1]] = data.read().decode("utf-8") if data else ""
    except (tarfile.TarError, UnicodeDecodeError, OSError) as err:
        raise InputError(f"{path}: cannot read the shard's labels ({err})") from None
    return out


def distinct_labels(path: str | Path) -> set[str]:
    """The distinct labels of one shard (what a label-collecting task returns: small)."""
    return set(shard_labels(path).values())


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
