from pathlib import Path

import lmdb
import pytest
import torch
from conftest import text_image, write_lmdb
from torch import nn

from clipocr.evaluate import Report, discover_lmdbs, evaluate
from clipocr.evaluate.benchmark import (
    GROUP_COMMON,
    GROUP_HARD,
    GROUP_OTHER,
    Dataset,
    Sample,
    canonical_name,
    measure_speed,
)
from clipocr.pipeline.charset import Charset
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
    with pytest.raises(InputError, match="two LMDBs are both IIIT5k"):
        discover_lmdbs(tmp_path)
    assert [d.name for d in discover_lmdbs(tmp_path, ["test/IIIT5k"])] == ["IIIT5k"]


def _report(results: dict[str, tuple[int, int]]) -> Report:
    """A report with `correct` of `n` samples right per dataset (label "ab", conf 0.5)."""
    datasets, samples = [], []
    for name, (n, correct) in results.items():
        datasets.append(Dataset(name, Path(name), GROUP_COMMON))
        samples += [
            Sample(name, i + 1, "ab", "ab" if i < correct else "a", 0.5) for i in range(n)
        ]  # fmt: skip
    return Report(datasets, samples)


def test_weighted_averages_are_sample_weighted() -> None:
    report = _report(
        {"IIIT5k": (10, 9), "SVT": (4, 2), "IC13_857": (5, 5), "IC13_1015": (6, 5),
         "IC15_1811": (3, 0), "IC15_2077": (7, 1), "SVTP": (2, 1), "CUTE80": (1, 1)}
    )  # fmt: skip
    rows = {r.name: r for r in report.rows}
    sub, full = report.combined("sub"), report.combined("full")
    assert sub.members == ("IIIT5k", "SVT", "IC13_857", "IC15_1811", "SVTP", "CUTE80")
    assert sub.complete and full.complete
    assert sub.samples == 10 + 4 + 5 + 3 + 2 + 1
    assert sub.accuracy == pytest.approx(100 * (9 + 2 + 5 + 0 + 1 + 1) / 25)
    # The same as the per-dataset accuracies weighted by their sample counts.
    weighted = sum(rows[m].accuracy * rows[m].samples for m in sub.members) / sub.samples
    assert sub.accuracy == pytest.approx(weighted)
    assert full.accuracy == pytest.approx(100 * (9 + 2 + 5 + 1 + 1 + 1) / 30)
    assert sub.one_minus_ned == pytest.approx(100 * (1 - 0.5 * (25 - 18) / 25))
    assert sub.confidence == pytest.approx(50.0)
    assert report.overall().samples == 38


def test_combined_with_missing_members_is_marked_incomplete() -> None:
    report = _report({"IIIT5k": (4, 1), "mywords": (3, 3)})
    sub = report.combined("sub")
    assert sub.members == ("IIIT5k",) and sub.accuracy == 25.0
    assert not sub.complete and sub.missing == ("SVT", "IC13_857", "IC15_1811", "SVTP", "CUTE80")
    assert _report({"mywords": (1, 1)}).combined("full") is None


class ConstantReader(nn.Module):
    """Reads every image as `text` with confidence 0.8; records the batch sizes it saw."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.charset = Charset.from_name("94")
        self.text = text
        self.batches: list[int] = []

    def read(self, images: torch.Tensor) -> list[tuple[str, float]]:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 128)
        assert -1.0 <= float(images.min()) and float(images.max()) <= 1.0
        self.batches.append(images.shape[0])
        return [(self.text, 0.8)] * images.shape[0]


def test_evaluate_scores_bad_images_as_wrong_and_restores_mode(tmp_path: Path) -> None:
    path = write_lmdb(
        tmp_path / "CUTE80",
        [(IMG, "ABC"), (b"not an image", "abc"), (IMG, "a.b.c"), (IMG, "xyz"), (IMG, "!!"),
         (IMG, "abc")],
    )  # fmt: skip
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.delete(b"label-000000006")
    env.close()
    model = ConstantReader("Abc").train()
    report = evaluate(model, [path], batch_size=2, charsets=("36", "94"))
    assert model.training and model.batches == [2, 2, 1]
    (row,) = report.rows
    assert row.name == "CUTE80" and row.samples == 4 and row.dropped == 1  # "!!" dropped
    assert row.tally.correct == 2  # ABC and a.b.c; the corrupt "abc" counts as wrong
    assert row.unreadable == 1 and [s.key for s in report.errors] == ["CUTE80/2"]
    assert report.errors[0].error.startswith("corrupt_image")
    assert report.unlabelled == {"CUTE80": 1}
    assert row.confidence == pytest.approx(100 * (0.8 * 3 + 0.0) / 4)
    (row94,) = report.rows_for("94")
    assert row94.samples == 5 and row94.tally.correct == 0  # "Abc" ≠ "ABC" once case counts


def test_measure_speed_reports_positive_figures() -> None:
    model = ConstantReader("a")
    speed = measure_speed(model, torch.zeros(3, 3, 32, 128, dtype=torch.uint8), batch_size=5)
    assert speed.ms_per_image > 0 and speed.images_per_s > 0 and speed.batch_size == 5
    assert model.batches[-1] == 5 and 1 in model.batches
