"""`from clipocr import Reader`: any mix of inputs, typed results, per-character confidences."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import text_image
from PIL import Image

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import load_uint8, normalize

HEAVY = ("dask", "distributed", "zarr", "open_clip")


@pytest.fixture(scope="module")
def reader():
    from clipocr import Reader

    return Reader(device="cpu", batch_size=3)


def test_importing_and_using_the_reader_loads_no_caching_machinery() -> None:
    """The Python API must not pay for the teacher job's dependencies (dask, zarr, open_clip);
    `import clipocr` alone does not even import torch."""
    code = (
        "import sys\n"
        "import clipocr\n"
        "light = 'torch' not in sys.modules\n"
        "from clipocr import Reader\n"
        "import numpy as np\n"
        "r = Reader(device='cpu').read(np.full((32, 100), 255, dtype=np.uint8))\n"
        f"print(light, [m for m in {HEAVY!r} if m in sys.modules], len(r))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.split("\n")[-2] == "True [] 1", done.stdout + done.stderr


def test_paths_bytes_pil_images_and_arrays_read_alike(reader, tmp_path: Path) -> None:
    data = text_image("reader", size=(120, 32))
    path = tmp_path / "word.png"
    path.write_bytes(data)
    pil = Image.open(io.BytesIO(data))
    arr = np.asarray(pil.convert("RGB"))
    readings = reader.read([path, str(path), data, pil, arr, arr[None].repeat(1, 0)[0]])
    assert [r.path for r in readings] == [str(path), str(path), "", "", "", ""]
    first = readings[0]
    assert all((r.text, r.confidence, r.char_confidences) == (first.text, first.confidence,
               first.char_confidences) for r in readings)  # fmt: skip
    assert all(r.ok for r in readings)


def test_results_are_the_students_with_one_confidence_per_character(reader) -> None:
    from clipocr.train_student.checkpoint import BUNDLED_STUDENT, load_student

    words = ["hello", "42", "zebra", "x"]
    batch = [text_image(w, size=(90, 32)) for w in words]
    readings = reader.read(batch)
    student = load_student(BUNDLED_STUDENT)
    want = student.read(normalize(torch.stack([load_uint8(b) for b in batch])))
    for r, (text, confidence) in zip(readings, want, strict=True):
        assert r.text == text
        assert r.confidence == pytest.approx(confidence, rel=1e-5, abs=1e-7)
        assert len(r.char_confidences) == len(r.text)
        assert all(0.0 < c <= 1.0 for c in r.char_confidences)
        # the word's confidence is the characters' product times the end-of-word step's
        assert r.confidence <= float(np.prod(r.char_confidences)) + 1e-9


def test_one_image_and_a_4d_array_are_accepted(reader) -> None:
    page = np.full((32, 100, 3), 255, dtype=np.uint8)
    assert len(reader.read(page)) == 1
    assert len(reader.read(np.stack([page] * 4))) == 4  # 4 images over two batches of 3
    assert len(reader.read(Image.fromarray(page))) == 1


def test_an_unreadable_input_raises_or_is_reported(reader, tmp_path: Path) -> None:
    good = text_image("ok")
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match=f"{missing}: no such file"):
        reader.read([good, missing])
    with pytest.raises(InputError, match="image 1: an object of type int is no image"):
        reader.read([good, 7])
    readings = reader.read([good, missing, np.zeros((3, 5, 5)), good], errors="report")
    assert [r.ok for r in readings] == [True, False, False, True]
    assert readings[1].error == "no such file" and "image array" in readings[2].error
    assert readings[0].text == readings[3].text


def test_a_decompression_bomb_is_one_error_and_the_rest_is_read(reader, tmp_path: Path) -> None:
    bomb = bomb_png(tmp_path / "bomb.png")
    readings = reader.read([text_image("a"), bomb, text_image("b")], errors="report")
    assert [r.ok for r in readings] == [True, False, True]
    assert readings[1].error.startswith("too large to decode safely")


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A tiny PNG declaring `side`×`side` pixels: PIL refuses to open it (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grey
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    data = zlib.compress(row * 64)  # a few rows are enough: PIL refuses at open
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def test_a_bad_errors_mode_or_batch_size_is_refused(reader) -> None:
    from clipocr import Reader

    with pytest.raises(ValueError, match="errors="):
        reader.read([text_image("a")], errors="ignore")
    with pytest.raises(InputError, match="batch_size 0"):
        Reader(batch_size=0)
    with pytest.raises(InputError, match="device 'tpu'"):
        Reader(device="tpu")
