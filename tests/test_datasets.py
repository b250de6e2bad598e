"""Benchmark folders are named as the literature names them, found anywhere under a root."""

from pathlib import Path

import pytest
from conftest import text_image, write_lmdb

from clipocr.evaluate import discover_lmdbs
from clipocr.evaluate.datasets import (
    GROUP_COMMON,
    GROUP_HARD,
    GROUP_OTHER,
    Dataset,
    canonical_name,
)
from clipocr.pipeline.errors import InputError

IMG = text_image("abc")


def tiny_lmdb(path: Path, labels: list[str]) -> Path:
    return write_lmdb(path, [(IMG, label) for label in labels])


@pytest.mark.parametrize(
    ("folder", "name"),
    [("IIIT5k_3000", "IIIT5k"), ("iiit5k", "IIIT5k"), ("IIIT5K", "IIIT5k"), ("SVT", "SVT"),
     ("svt_647", "SVT"), ("SVTP_645", "SVTP"), ("SVTP", "SVTP"), ("CUTE80_288", "CUTE80"),
     ("cute80", "CUTE80"), ("IC13_857", "IC13_857"), ("ic13_1015", "IC13_1015"),
     ("ICDAR2013_857", "IC13_857"), ("ic15_1811", "IC15_1811"), ("IC15_2077", "IC15_2077"),
     ("ArT", "ArT"), ("COCOv1.4", "COCOv1.4"), ("coco_text", "COCOv1.4"), ("Uber", "Uber"),
     ("WordArt", "WordArt"), ("OST", "OST"), ("HOST", "HOST"), ("wost", "WOST"),
     ("IC13", None), ("mywords", None), ("SVTX", None), ("IC13_999", None)],
)  # fmt: skip
def test_canonical_names_are_tolerant(folder: str, name: str | None) -> None:
    assert canonical_name(folder) == name


def test_bare_ic_folder_is_named_by_its_size() -> None:
    assert canonical_name("IC13", 857) == "IC13_857"
    assert canonical_name("ic15", 2077) == "IC15_2077"
    assert canonical_name("IC13", 100) is None


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    tiny_lmdb(root / "evaluation" / "CUTE80_288", ["a"])
    tiny_lmdb(root / "evaluation" / "IIIT5k_3000", ["a", "b"])
    tiny_lmdb(root / "test" / "IC15_1811", ["a"])
    tiny_lmdb(root / "test" / "SVT", ["a"])
    tiny_lmdb(root / "benchmark" / "deep" / "er" / "WordArt", ["a"])
    tiny_lmdb(root / "misc" / "mywords", ["a"])
    tiny_lmdb(root / "evaluation" / "IC13", ["a"] * 857)
    tiny_lmdb(root / ".hidden" / "IIIT5k", ["a"])  # e.g. an LMDB still being written
    (root / "empty").mkdir()
    return root


def test_discovery_names_groups_and_orders(tree: Path) -> None:
    found = discover_lmdbs(tree)
    assert [d.name for d in found] == [
        "IIIT5k", "SVT", "IC13_857", "IC15_1811", "CUTE80", "WordArt", "mywords"
    ]  # fmt: skip
    groups = {d.name: d.group for d in found}
    assert groups["IIIT5k"] == groups["IC13_857"] == GROUP_COMMON
    assert groups["WordArt"] == GROUP_HARD and groups["mywords"] == GROUP_OTHER
    by_name = {d.name: d.path for d in found}
    assert by_name["IIIT5k"] == tree / "evaluation" / "IIIT5k_3000"
    assert by_name["WordArt"] == tree / "benchmark" / "deep" / "er" / "WordArt"


def test_discovery_follows_symlinks_once(tree: Path, tmp_path: Path) -> None:
    shared = tiny_lmdb(tmp_path / "shared" / "SVTP_645", ["a"])
    (tree / "linked").symlink_to(shared.parent)
    (tree / "linked" / "loop").symlink_to(tree / "linked")
    found = discover_lmdbs(tree)
    assert [d for d in found if d.name == "SVTP"] == [
        Dataset("SVTP", tree / "linked" / "SVTP_645", GROUP_COMMON)
    ]
    assert len(found) == 8


def test_discovery_selects_by_tolerant_name(tree: Path) -> None:
    found = discover_lmdbs(tree, ["iiit5k_3000", "CUTE80", "misc/mywords"])
    assert [d.name for d in found] == ["IIIT5k", "CUTE80", "mywords"]
    with pytest.raises(InputError, match="--datasets SVTP: not found; available: "):
        discover_lmdbs(tree, ["SVTP"])


def test_discovery_of_a_single_lmdb_and_bad_roots(tmp_path: Path) -> None:
    single = tiny_lmdb(tmp_path / "SVTP", ["a"])
    assert [(d.name, d.path) for d in discover_lmdbs(single)] == [("SVTP", single)]
    (tmp_path / "nothing" / "here").mkdir(parents=True)
    with pytest.raises(InputError, match="no LMDB .* found under it"):
        discover_lmdbs(tmp_path / "nothing")
    with pytest.raises(InputError, match="no such data folder"):
        discover_lmdbs(tmp_path / "missing")


def test_same_benchmark_twice_is_an_error_and_unknown_twins_get_paths(tmp_path: Path) -> None:
    tiny_lmdb(tmp_path / "a" / "words", ["a"])
    tiny_lmdb(tmp_path / "b" / "words", ["a"])
    assert [d.name for d in discover_lmdbs(tmp_path)] == ["a/words", "b/words"]
    tiny_lmdb(tmp_path / "test" / "IIIT5k", ["a"])
    tiny_lmdb(tmp_path / "val" / "IIIT5k_3000", ["a"])
    with pytest.raises(InputError, match="two test sets are both IIIT5k"):
        discover_lmdbs(tmp_path)
    assert [d.name for d in discover_lmdbs(tmp_path, ["test/IIIT5k"])] == ["IIIT5k"]


def test_labelled_image_folders_are_test_sets_too(tree: Path) -> None:
    """A user's own test set as ``prepare --folder`` reads it; `discover_lmdbs` (the peers'
    benchmark) stays LMDB-only."""
    from clipocr.evaluate.datasets import discover_datasets, open_test_set

    mine = tree / "mine" / "receipts"
    (mine / "img").mkdir(parents=True)
    (mine / "img" / "0.png").write_bytes(IMG)
    (mine / "labels.tsv").write_text("img/0.png\tabc\n")
    assert "receipts" not in {d.name for d in discover_lmdbs(tree)}
    tiny_lmdb(mine / "img" / "nested" / "IIIT5k", ["a"])  # not searched below a labelled folder
    found = {d.name: d for d in discover_datasets(tree)}
    assert "receipts" in found and found["receipts"].group == GROUP_OTHER
    assert found["IIIT5k"].path == tree / "evaluation" / "IIIT5k_3000"
    source = open_test_set(found["receipts"])
    assert [(n, label) for n, _, label in source.iter_raw(skip_bad=False)] == [(1, "abc")]
    assert [d.name for d in discover_datasets(mine)] == ["receipts"]  # --data at the folder
