"""`clipocr prepare` as a user runs it: bad input and full disks end in one red line, exit 2."""

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds
from conftest import run_console, text_image, write_lmdb

from clipocr.commands.app import main

WORDS = [f"w{i}" for i in range(12)]


def run(capsys: pytest.CaptureFixture[str], monkeypatch, *args: object) -> tuple[int, str, str]:
    return run_console(main, "clipocr", capsys, monkeypatch, *args)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return write_lmdb(tmp_path / "db", [(text_image(w), w) for w in WORDS])


def _one_error_line(code: int, err: str, *parts: str) -> None:
    """Exit 2 and stderr ending in one ``error:`` line (a progress bar may come before it)."""
    assert code == 2, err
    lines = err.rstrip("\n").split("\n")
    assert lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    for part in parts:
        assert part in lines[-1], err


def test_prepare_reports_counts(capsys, monkeypatch, db: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, monkeypatch, "prepare", "--lmdb", db, "--out", tmp_path / "s",
                         "--shard-size", 5)  # fmt: skip
    assert code == 0, err
    assert out.startswith("prepared 12 samples into 3 shards")


def test_truncated_lmdb_is_one_line_not_a_bus_error(db: Path, tmp_path: Path) -> None:
    """In a child process: before the size check this died of SIGBUS (exit 135, no message),
    which would take the test runner down with it."""
    data = db / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    result = subprocess.run(
        [sys.executable, "-c", "from clipocr.commands.app import main; main()",
         "prepare", "--lmdb", str(db), "--out", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    _one_error_line(result.returncode, result.stderr, f"{data}: truncated")
    assert not (tmp_path / "s").exists()


def test_resume_with_another_shard_size(capsys, monkeypatch, db: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert (
        run(capsys, monkeypatch, "prepare", "--lmdb", db, "--out", out, "--shard-size", 4)[0] == 0
    )
    (out / "shards.json").unlink()  # as if killed before the index was written
    code, _, err = run(capsys, monkeypatch, "prepare", "--lmdb", db, "--out", out,
                       "--shard-size", 5)  # fmt: skip
    _one_error_line(code, err, "--shard-size 4", "not 5")


def test_disk_full(capsys, monkeypatch, db: Path, tmp_path: Path) -> None:
    def full(self, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wds.TarWriter, "write", full)
    code, _, err = run(capsys, monkeypatch, "prepare", "--lmdb", db, "--out", tmp_path / "s")
    _one_error_line(code, err, "disk full", "No space left on device")
    assert list((tmp_path / "s").iterdir()) == []  # nothing under a final (or any) name


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (b"a.png\tok\na.png\tcaf\xe9\n", "labels.tsv:2: not UTF-8"),
        (b"a.png\tok\n/etc/hostname\thost\n", "labels.tsv:2: path '/etc/hostname' leaves"),
        (b"../a.png\tok\n", "labels.tsv:1: path '../a.png' leaves"),
    ],
)
def test_bad_labels_file(capsys, monkeypatch, tmp_path: Path, labels: bytes, message: str) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.png").write_bytes(text_image("ok"))
    (folder / "labels.tsv").write_bytes(labels)
    code, _, err = run(capsys, monkeypatch, "prepare", "--folder", folder, "--out", tmp_path / "s")
    _one_error_line(code, err, message)


def test_shard_size_zero(capsys, monkeypatch, db: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, monkeypatch, "prepare", "--lmdb", db, "--out", tmp_path / "s",
                       "--shard-size", 0)  # fmt: skip
    _one_error_line(code, err, "--shard-size 0: must be at least 1")
