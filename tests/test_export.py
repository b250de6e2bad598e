"""`clipocr export` and reading its files: the same strings and confidences as PyTorch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import text_image
from test_export_graph import ending_student, images
from typer.testing import CliRunner

from clipocr.commands.app import app
from clipocr.evaluate.export import export_student
from clipocr.evaluate.reader import Reader
from clipocr.pipeline.errors import InputError
from clipocr.train_student.checkpoint import save_student

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript", "onnx"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the export extra is not installed")


@pytest.fixture(scope="module")
def student():
    """A tiny student of 3 decoding steps and one decoder layer (the export's time grows with
    the unrolled graph) whose rows end at different steps."""
    return ending_student(max_len=2, dec_depth=1)


def inputs() -> list:
    """A mix of inputs: grey pages of several brightnesses and two rendered words."""
    pages = [np.ascontiguousarray(img.permute(1, 2, 0).numpy()) for img in images(5)]
    return [*pages, text_image("word"), text_image("42")]


def assert_same_readings(got: list, want: list) -> None:
    assert [r.text for r in got] == [r.text for r in want]
    np.testing.assert_allclose(
        [r.confidence for r in got], [r.confidence for r in want], rtol=0, atol=1e-5
    )
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.char_confidences, b.char_confidences, rtol=0, atol=1e-5)


def test_a_torchscript_export_reads_as_the_student(student, tmp_path: Path) -> None:
    result = export_student(student, tmp_path / "student.pt", "torchscript")
    assert result.max_prob_diff is not None and result.max_prob_diff <= 1e-5
    exported = Reader(tmp_path / "student.pt", device="cpu", batch_size=3)
    assert exported.charset == student.charset
    assert_same_readings(exported.read(inputs()), Reader.from_student(student).read(inputs()))


@pytest.fixture(scope="module")
def onnx_file(student, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, its ONNX export made by the CLI)."""
    root = tmp_path_factory.mktemp("export")
    save_student(root / "student.safetensors", student)
    result = CliRunner().invoke(
        app, ["export", str(root / "student.safetensors"), "--out", str(root / "s.onnx")]
    )
    assert result.exit_code == 0, result.output
    assert (
        f"{root / 's.onnx'}: onnx," in result.stdout and "checked against PyTorch" in result.stdout
    )
    return root / "student.safetensors", root / "s.onnx"


@needs_onnx
def test_an_onnx_export_reads_as_the_student_at_any_batch_size(student, onnx_file) -> None:
    _, onnx = onnx_file
    want = Reader.from_student(student).read(inputs())
    for batch in (1, 3, 64):
        assert_same_readings(Reader(onnx, device="cpu", batch_size=batch).read(inputs()), want)


@needs_onnx
def test_the_onnx_file_describes_itself(student, onnx_file) -> None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_file[1])).metadata_props}
    assert meta["format"] == "clipocr-greedy-graph" and meta["charset"] == student.charset.chars
    assert "uint8" in meta["input"] and "0 = end of word" in meta["outputs"]


@needs_onnx
def test_read_onnx_prints_what_read_with_the_checkpoint_prints(onnx_file, tmp_path) -> None:
    checkpoint, onnx = onnx_file
    for i, word in enumerate(["abc", "hello", "7"]):
        (tmp_path / f"{i}.png").write_bytes(text_image(word))
    runner = CliRunner()
    torch_rows = runner.invoke(app, ["read", str(checkpoint), str(tmp_path)])
    onnx_rows = runner.invoke(app, ["read", "--onnx", str(onnx), str(tmp_path)])
    assert torch_rows.exit_code == onnx_rows.exit_code == 0, onnx_rows.output
    assert onnx_rows.stdout == torch_rows.stdout and len(onnx_rows.stdout.splitlines()) == 3
    both = runner.invoke(app, ["read", str(checkpoint), str(tmp_path), "--onnx", str(onnx)])
    assert both.exit_code != 0


def test_reading_onnx_without_onnxruntime_says_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(InputError, match=r"needs onnxruntime \(pip install 'clipocr\[export\]'\)"):
        Reader(tmp_path / "model.onnx", device="cpu")


@needs_onnx
def test_a_file_that_is_no_export_is_refused_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match=f"{junk}: not an ONNX model onnxruntime can load"):
        Reader(junk, device="cpu")


def test_bad_export_requests_are_one_line(student, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--format tflite: use one of onnx, torchscript"):
        export_student(student, tmp_path / "x", "tflite")
    with pytest.raises(InputError, match="is a folder"):
        export_student(student, tmp_path, "torchscript")
    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "x.onnx")]
    )
    assert result.exit_code != 0 and not (tmp_path / "x.onnx").exists()
