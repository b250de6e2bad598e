"""`clipocr prepare` as a user runs it: bad input and full disks end in one red line, exit 2."""

import errno
import json
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
        (
            b"a.png\tpneumatic\na.png\tother\n",
            "labels.tsv:2: 'a.png' is labelled 'other' here but 'pneumatic' on line 1",
        ),
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


GERMAN = "0123456789abcdefghijklmnopqrstuvwxyzäöüß"


def _labelled(folder: Path, rows: list[tuple[str, str]]) -> Path:
    folder.mkdir(parents=True)
    for name, _ in rows:
        (folder / name).write_bytes(text_image(name))
    (folder / "labels.tsv").write_text("".join(f"{n}\t{lab}\n" for n, lab in rows + rows[:1]))
    return folder


def test_prepare_with_a_charset_file_keeps_unicode_labels(capsys, monkeypatch, tmp_path: Path):
    """Issue 21: ``--charset FILE`` (one symbol per line); labels stay NFC Unicode, never folded
    to ASCII; symbols outside the file are removed as for the ASCII sets. Issue 23: the
    duplicate row is counted."""
    charset = tmp_path / "de.txt"
    charset.write_text("\n".join(GERMAN) + "\n")
    folder = _labelled(tmp_path / "f", [("0.png", "Größe"), ("1.png", "A\u0308RGER"),
                                        ("2.png", "café"), ("3.png", "日本")])  # fmt: skip
    code, out, err = run(capsys, monkeypatch, "prepare", "--folder", folder, "--out",
                         tmp_path / "s", "--charset", charset)  # fmt: skip
    assert code == 0, err
    assert "custom charset of 40 symbols" in out
    assert "'duplicate_row': 1" in out and "'label_empty': 1" in out
    labels = [sample["txt"].decode() for sample in wds.WebDataset(
        str(tmp_path / "s" / "shard-000000.tar"), shardshuffle=False)]  # fmt: skip
    assert labels == ["größe", "ärger", "caf"]
    assert json.loads((tmp_path / "s" / "shards.json").read_text())["charset"] == GERMAN


def test_bad_charset_is_one_line(capsys, monkeypatch, db: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, monkeypatch, "prepare", "--lmdb", db, "--out", tmp_path / "s",
                       "--charset", tmp_path / "missing.txt")  # fmt: skip
    _one_error_line(code, err, "missing.txt: no such charset file")


def test_lmdb_command(capsys, monkeypatch, tmp_path: Path) -> None:
    folder = _labelled(tmp_path / "f", [("0.png", "Größe"), ("1.png", "x")])
    code, out, err = run(capsys, monkeypatch, "lmdb", folder, tmp_path / "db")
    assert code == 0, err
    assert out == f"wrote 2 samples to {tmp_path / 'db'}; left out: 1 duplicate_row\n"
    code, _, err = run(capsys, monkeypatch, "lmdb", folder, tmp_path / "db")
    _one_error_line(code, err, "db: already exists")
    code, _, err = run(capsys, monkeypatch, "lmdb", tmp_path, tmp_path / "db2")
    _one_error_line(code, err, "no labels.tsv")


def test_synth_refuses_an_alphabet_no_font_covers(capsys, monkeypatch, tmp_path: Path) -> None:
    code, _, err = run(capsys, monkeypatch, "synth", "--out", tmp_path / "db", "--num", 2,
                       "--charset", "abcdefgh\U0010fffd")  # fmt: skip
    _one_error_line(code, err, "no installed font covers all", "--fonts DIR")
    assert not (tmp_path / "db").exists()
