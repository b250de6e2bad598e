"""The ``shards.json`` index of a prepared shard folder: reading and checking it.

Kept apart from `shards` (which writes the index with the shards) so the reader and writer each
stay one readable file; `shards` re-exports these names, where every caller imports them from.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipocr.pipeline.errors import InputError

INDEX_NAME = "shards.json"


def load_index(shard_dir: str | Path) -> dict:
    """The ``shards.json`` of a prepared folder, or an InputError saying what is missing."""
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise InputError(f"{shard_dir}: no such shard folder")
    path = shard_dir / INDEX_NAME
    if not path.is_file():
        raise InputError(f"{path}: missing; run `clipocr prepare` (or let it finish) first")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not _index_ok(index):
        raise InputError(
            f"{path}: not a shards.json written by `clipocr prepare` (a charset, num_samples and "
            "shards of plain .tar file names with counts expected); prepare the shards again"
        )
    return index


def _index_ok(index: object) -> bool:
    """The fields readers rely on, with their types (a hand-edited or foreign file may lack
    them); a shard name is a bare file name, so no reader is sent outside the folder."""
    if not isinstance(index, dict) or not isinstance(index.get("charset"), str):
        return False
    shards = index.get("shards")
    return (
        isinstance(index.get("num_samples"), int)
        and isinstance(shards, list)
        and all(
            isinstance(s, dict)
            and isinstance(s.get("name"), str)
            and s["name"].endswith(".tar")
            and Path(s["name"]).name == s["name"]
            and isinstance(s.get("count"), int)
            and s["count"] >= 0
            for s in shards
        )
    )


def shard_paths(shard_dir: str | Path) -> list[Path]:
    """Paths of the shards listed in the index, in order; each must exist."""
    shard_dir = Path(shard_dir)
    paths = [shard_dir / s["name"] for s in load_index(shard_dir)["shards"]]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: listed in {INDEX_NAME} but missing")
    return paths
