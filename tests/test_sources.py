"""Prepare sources: image folders with labels.tsv, LMDBs, and what is refused in a listing."""

from pathlib import Path

import pytest
from conftest import text_image

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.shards import ShardReader, prepare_shards
from clipocr.pipeline.sources import ImageFolderSource

CS = Charset.from_name("36")


def _folder(root: Path, labels: bytes, images: tuple[str, ...] = ("a.png",)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in images:
        (root / name).write_bytes(text_image(name))
    (root / "labels.tsv").write_bytes(labels)
    return root


def test_image_folder_source(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    (root / "img").mkdir(parents=True)
    for i, w in enumerate(["Alpha", "Beta"]):
        (root / "img" / f"{i}.png").write_bytes(text_image(w))
    (root / "labels.tsv").write_text("img/0.png\tAlpha\n\nimg/1.png\tBeta\nimg/missing.png\tGone\n")
    index = prepare_shards([root], tmp_path / "shards", CS, progress=False)
    assert index.num_samples == 2 and index.skipped == {"missing_image": 1}
    assert [lab for _, _, lab in ShardReader(tmp_path / "shards")] == ["alpha", "beta"]


def test_malformed_labels_file(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    root.mkdir()
    (root / "labels.tsv").write_text("a.png\tA\nno-tab-here\n")
    with pytest.raises(InputError, match=r"labels.tsv:2: malformed line"):
        prepare_shards([root], tmp_path / "shards", CS, progress=False)
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_bad_sources(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    if kind == "empty":
        src.mkdir()
    with pytest.raises(InputError, match=str(src)):
        prepare_shards([src], tmp_path / "out", CS, progress=False)


def test_labels_file_that_is_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    """A Latin-1 file is refused at its first bad byte, not read with replaced characters (or
    a UnicodeDecodeError traceback): re-saving it as UTF-8 is the fix, and skipping would drop
    every accented line."""
    root = _folder(tmp_path / "f", b"a.png\tcafe\r\na.png\tcaf\xe9\r\n")
    with pytest.raises(InputError, match=r"labels.tsv:2: not UTF-8 \(byte 0xe9 at column 10\)"):
        ImageFolderSource(root)


def test_labels_file_with_bom_and_crlf(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f", "\ufeffa.png\tcafé\r\n".encode())
    assert ImageFolderSource(root).entries == [(1, "a.png", "café")]


@pytest.mark.parametrize("rel", ["../outside.png", "img/../../outside.png", "/etc/hostname"])
def test_paths_that_leave_the_folder_are_refused(tmp_path: Path, rel: str) -> None:
    """Never read a file outside the folder the user named (``/etc/hostname`` was read as an
    "image" before): the line is refused with its number."""
    (tmp_path / "outside.png").write_bytes(text_image("out"))
    root = _folder(tmp_path / "f" / "g", f"a.png\tok\n{rel}\tbad\n".encode())
    with pytest.raises(InputError, match=r"labels.tsv:2: path .* leaves the folder"):
        prepare_shards([root], tmp_path / "shards", CS, progress=False)
    assert not (tmp_path / "shards").exists()


def test_dots_inside_names_are_not_leaving(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f", b"..a.png\tok\n", images=("..a.png",))
    assert [rel for _, rel, _ in ImageFolderSource(root).entries] == ["..a.png"]


def test_duplicate_rows_are_one_sample_and_counted(tmp_path: Path) -> None:
    """Issue 23: ``0.png pneumatic`` listed twice gave two samples and no count."""
    root = _folder(
        tmp_path / "f", b"a.png\tpneumatic\nb.png\tother\n./a.png\tpneumatic\na.png\tpneumatic\n",
        images=("a.png", "b.png"),
    )  # fmt: skip
    index = prepare_shards([root], tmp_path / "shards", CS, progress=False)
    assert index.num_samples == 2 and index.skipped == {"duplicate_row": 2}
    assert [lab for _, _, lab in ShardReader(tmp_path / "shards")] == ["pneumatic", "other"]


def test_conflicting_labels_for_one_file_name_both_rows(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f", b"a.png\tpneumatic\n\na.png\tother\n")
    with pytest.raises(
        InputError,
        match=r"labels.tsv:3: 'a.png' is labelled 'other' here but 'pneumatic' on line 1; keep one",
    ):
        prepare_shards([root], tmp_path / "shards", CS, progress=False)
    assert not (tmp_path / "shards").exists()


def test_raw_records_number_samples_and_keep_unreadable_ones(tmp_path: Path) -> None:
    """The evaluator's view: numbered from 1 in listing order, a missing image as ``None``
    (scored wrong there) unless skipped and counted."""
    root = _folder(
        tmp_path / "f", b"a.png\tA\n\ngone.png\tG\nb.png\tB\n", images=("a.png", "b.png")
    )
    source = ImageFolderSource(root)
    raw = list(source.iter_raw(skip_bad=False))
    assert [(n, data is None, label) for n, data, label in raw] == [
        (1, False, "A"), (2, True, "G"), (3, False, "B")
    ]  # fmt: skip
    assert raw[0][1] == (root / "a.png").read_bytes()
    assert [n for n, _, _ in source.iter_raw()] == [1, 3]
    assert source.skipped == {"missing_image": 1}
