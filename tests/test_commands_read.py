"""`clipocr read` end to end: a tiny student trained on words (once per session) reads their image
files back; the bundled student reads words rendered here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipocr.commands.app import app
from clipocr.pipeline.lmdb_io import LmdbReader

WORDS = 32


@pytest.fixture(scope="module")
def trained(overfit_run) -> tuple[Path, Path, list[str]]:
    """A `test`-preset student that reads its 16 training words (conftest's `overfit_run`,
    trained once per session and shared with the trainer tests), and the words as image files."""
    return overfit_run.student, overfit_run.images, overfit_run.labels


def as_image_files(lmdb: Path, images: Path) -> list[str]:
    """Write each record of `lmdb` to `images/NNN.jpg`; return the labels in file order."""
    images.mkdir()
    labels = []
    for i, data, label in LmdbReader(lmdb).iter_raw():
        (images / f"{i:03d}.jpg").write_bytes(data)
        labels.append(label)
    return labels


def test_a_trained_student_reads_its_training_words_back(trained) -> None:
    checkpoint, images, labels = trained
    result = CliRunner().invoke(app, ["read", str(checkpoint), str(images), "--json"])
    assert result.exit_code == 0, result.output[-2000:]
    readings = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in readings] == sorted(p.name for p in images.iterdir())
    correct = sum(r["text"] == label for r, label in zip(readings, labels, strict=True))
    assert correct >= 0.9 * len(labels), readings  # it reads all 16 (overfit_run)
    assert all(0.0 <= r["confidence"] <= 1.0 for r in readings)


def test_unreadable_files_are_reported_and_the_others_still_read(trained, tmp_path) -> None:
    checkpoint, images, _ = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    missing = tmp_path / "missing.jpg"
    good = sorted(images.iterdir())[:2]
    result = CliRunner().invoke(
        app, ["read", str(checkpoint), str(good[0]), str(broken), str(missing), str(good[1])]
    )
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(good[0]), str(good[1])]
    assert f"error: {broken}: not a readable image" in result.stderr
    assert f"error: {missing}: no such file" in result.stderr


def test_a_folder_without_images_is_one_clear_error(trained, tmp_path) -> None:
    checkpoint, _, _ = trained
    result = CliRunner().invoke(app, ["read", str(checkpoint), str(tmp_path)])
    assert result.exit_code != 0
    assert "no image files found" in str(result.exception) + result.output


def test_without_a_checkpoint_the_bundled_student_reads_unseen_rendered_words(tmp_path) -> None:
    """The shipped student (assets/student/STUDENT.md: 74 % of 500 unseen clean words of the
    issue-20 renderer) must read most of a few dozen clean words rendered with a seed it never
    trained on (an untrained student reads none)."""
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.synth import render_lmdb

    render_lmdb(
        tmp_path / "lmdb", num=WORDS, seed=7, charset=Charset.from_name("36"), style="clean"
    )
    images = tmp_path / "images"
    labels = as_image_files(tmp_path / "lmdb", images)
    result = CliRunner().invoke(app, ["read", str(images), "--json", "--threads", "1"])
    assert result.exit_code == 0, result.output[-2000:]
    readings = [json.loads(line) for line in result.stdout.splitlines()]
    # charset 36 reads lower case (PARSeq's protocol lower-cases the labels too)
    correct = sum(r["text"] == label.lower() for r, label in zip(readings, labels, strict=True))
    assert correct >= 0.55 * len(labels), readings


def test_a_checkpoint_without_images_is_one_clear_error(trained) -> None:
    checkpoint, _, _ = trained
    result = CliRunner().invoke(app, ["read", str(checkpoint)])
    assert result.exit_code != 0
    assert "no image files or folders" in str(result.exception) + result.output
