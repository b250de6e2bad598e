"""`clipocr read` with the bundled student: robust to odd files and names, quiet until long."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import text_image
from PIL import Image
from test_reader import bomb_png
from typer.testing import CliRunner

from clipocr.commands.app import app
from clipocr.evaluate.read import image_files, tsv_field


def read(*args: object):
    return CliRunner().invoke(app, ["read", *map(str, args)])


def untsv(field: str) -> str:
    """Undo `tsv_field` in one left-to-right pass: what a reader of the TSV does."""
    out, i = bytearray(), 0
    simple = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    while i < len(field):
        if field[i] != "\\":
            out += os.fsencode(field[i])
            i += 1
        elif field[i + 1] == "x":
            out.append(int(field[i + 2 : i + 4], 16))
            i += 4
        else:
            out += simple[field[i + 1]].encode()
            i += 2
    return os.fsdecode(bytes(out))


@pytest.mark.parametrize(
    "name", ["plain.png", "a\tb.png", "two\nlines.png", "c:\\x\\t.png", os.fsdecode(b"\xff.png")]
)
def test_tsv_fields_escape_tabs_newlines_and_backslashes_reversibly(name: str) -> None:
    field = tsv_field(name)
    assert "\t" not in field and "\n" not in field and "\r" not in field
    assert untsv(field) == name


def test_file_names_with_tabs_and_newlines_stay_one_row_of_three_fields(tmp_path: Path) -> None:
    names = ["tab\there.png", "new\nline.png", "back\\slash.png", os.fsdecode(b"not-utf8-\xe9.png")]
    for name in names:
        (tmp_path / name).write_bytes(text_image("word"))
    result = read(tmp_path)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert all(len(row) == 3 for row in rows), rows
    assert sorted(Path(untsv(row[0])).name for row in rows) == sorted(names)


def test_a_decompression_bomb_is_one_error_line_and_the_good_files_are_read(tmp_path) -> None:
    good = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in good:
        path.write_bytes(text_image("good"))
    bomb = bomb_png(tmp_path / "bomb.png")
    result = read(good[0], bomb, good[1])
    assert result.exit_code == 1
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == list(map(str, good))
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {bomb}: too large to decode safely")


def test_a_16_bit_image_reads_as_its_8_bit_original(tmp_path: Path) -> None:
    """Issue 23: PIL's convert("RGB") clipped 16-bit grey to white, so it read as an empty page."""
    grey = np.asarray(Image.open(io.BytesIO(text_image("hello", size=(90, 32)))).convert("L"))
    Image.fromarray(grey).save(tmp_path / "8bit.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16bit.png")
    assert Image.open(tmp_path / "16bit.png").mode == "I;16"
    result = read(tmp_path / "8bit.png", tmp_path / "16bit.png", "--json")
    assert result.exit_code == 0, result.output
    eight, sixteen = (json.loads(line) for line in result.stdout.splitlines())
    assert eight["text"] and (sixteen["text"], sixteen["confidence"]) == (
        eight["text"],
        eight["confidence"],
    )


def test_json_carries_per_character_confidences(tmp_path: Path) -> None:
    (tmp_path / "w.png").write_bytes(text_image("clip", size=(80, 32)))
    result = read(tmp_path / "w.png", "--json")
    assert result.exit_code == 0, result.output
    reading = json.loads(result.stdout)
    assert set(reading) == {"path", "text", "confidence", "char_confidences", "error"}
    assert len(reading["char_confidences"]) == len(reading["text"]) > 0


def test_a_progress_bar_shows_on_stderr_only_past_one_batch(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(text_image(str(i)))
    several = read(tmp_path, "--batch-size", "2")
    assert several.exit_code == 0 and "reading" in several.stderr and "3/3" in several.stderr
    one = read(tmp_path, "--batch-size", "3")
    assert one.exit_code == 0 and "reading" not in one.stderr
    quiet = read(tmp_path, "--batch-size", "2", "--no-progress")
    assert "reading" not in quiet.stderr and len(quiet.stdout.splitlines()) == 3


def test_folders_expand_to_their_image_files_sorted(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "notes.txt", "sub/c.webp"):
        (tmp_path / name).write_bytes(b"x")
    named = tmp_path / "notes.txt"
    assert image_files([tmp_path, named]) == [
        tmp_path / "a.JPG",
        tmp_path / "b.png",
        tmp_path / "sub" / "c.webp",
        named,
    ]
