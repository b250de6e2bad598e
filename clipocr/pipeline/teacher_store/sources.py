"""Which source shard a group was cached from: a content digest recorded at caching time.

Keys (``<shard>/<index>``) and labels do not identify the images: a store cached from other
images with the same words has the same keys and text rows, so the join would pair images with
another image's teacher features without complaint. The caching job therefore records, per
group, the shard file's size, its SHA-256 (cheap next to running the teacher: ~25 ms for a
10 MB shard) and a *sample* digest over its size and first and last `SAMPLE_BYTES`.

`compare` checks a shard file against that record, either fully (``verify --shards``: reads
every byte) or quickly (the trainer, at start: reads 128 KiB per shard, which catches replaced
images unless only ones in the middle of a shard changed). Groups written before digests
existed have no record; they are reported as such, never failed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SOURCE_ATTR = "source"
SAMPLE_BYTES = 65536


def _sample_digest(f, size: int) -> str:
    h = hashlib.sha256(str(size).encode())
    h.update(f.read(SAMPLE_BYTES))
    if size > SAMPLE_BYTES:
        f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
        h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _full_digest(f) -> str:
    h = hashlib.sha256()  # hashlib.file_digest needs Python 3.11
    while block := f.read(1 << 20):
        h.update(block)
    return h.hexdigest()


def shard_digest(path: str | Path) -> dict:
    """The record stored in a group's ``source`` attribute for the shard file at `path`."""
    path = Path(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        sample = _sample_digest(f, size)
        f.seek(0)
        full = _full_digest(f)
    return {"file": path.name, "bytes": size, "sample_sha256": sample, "sha256": full}


def compare(recorded: dict, path: str | Path, thorough: bool) -> str | None:
    """Why the shard file at `path` is not the one `recorded` describes; None if it is."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
        if size != recorded.get("bytes"):
            return f"{path}: {size} bytes, the store was cached from {recorded.get('bytes')}"
        with open(path, "rb") as f:
            if _sample_digest(f, size) != recorded.get("sample_sha256"):
                return f"{path}: content differs from the shard the store was cached from"
            if thorough:
                f.seek(0)
                if _full_digest(f) != recorded.get("sha256"):
                    return f"{path}: SHA-256 differs from the shard the store was cached from"
    except OSError as err:
        return f"{path}: unreadable ({err.strerror or err})"
    return None
