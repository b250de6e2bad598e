"""Store location: local folders and fsspec URLs behave alike where the store relies on it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from clipocr.pipeline.teacher_store.location import Location, tmp_owner


@pytest.fixture(params=["local", "memory"])
def loc(request, tmp_path: Path) -> Location:
    if request.param == "local":
        return Location(tmp_path / "root")
    return Location(f"memory://loc-{uuid.uuid4().hex}")


def test_create_text_is_exclusive(loc: Location) -> None:
    assert loc.read_text("m.json") is None
    assert loc.create_text("m.json", "first")
    assert not loc.create_text("m.json", "second")
    assert loc.read_text("m.json") == "first"
    assert loc.dirs() == []  # the local temporary file is gone, nothing else was made


def test_dirs_remove_and_nbytes(loc: Location) -> None:
    for name, data in (("b/x", b"12345"), ("a/y", b"123")):
        loc.fs.makedirs(loc.child(name.split("/")[0]), exist_ok=True)
        loc.fs.pipe_file(loc.child(name), data)
    assert loc.dirs() == ["a", "b"] and loc.exists("b/x")
    assert loc.nbytes("b") == 5
    loc.remove("b")
    loc.remove("never-there")
    assert loc.dirs() == ["a"]


def test_file_url_is_local(tmp_path: Path) -> None:
    loc = Location(f"file://{tmp_path}")
    assert loc.local and loc.path == tmp_path and loc.child("g") == f"{tmp_path}/g"
    assert not Location("memory://x").local


def test_tmp_owner() -> None:
    hexid = uuid.uuid4().hex
    assert tmp_owner(f".tmp-{hexid}-shard-000001") == "shard-000001"
    assert tmp_owner("shard-000001") is None
    assert tmp_owner(".tmp-short-shard") is None


def test_tmp_groups_by_name(tmp_path: Path) -> None:
    loc = Location(tmp_path / "root")
    assert loc.tmp_groups("shard-1") == []  # no folder yet
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    for name in (f".tmp-{a}-shard-1", f".tmp-{b}-shard-1", f".tmp-{a}-shard-11", "shard-1"):
        (tmp_path / "root" / name).mkdir(parents=True)
    assert loc.tmp_groups("shard-1") == sorted([f".tmp-{a}-shard-1", f".tmp-{b}-shard-1"])
    assert Location("memory://nothing-here").tmp_groups("shard-1") == []  # written in place
