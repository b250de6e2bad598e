"""Shared fixtures: tiny STR data made here, never downloaded."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from clipocr.pipeline.lmdb_io import LmdbWriter

torch.set_num_threads(1)


def text_image(text: str, fmt: str = "PNG", size: tuple[int, int] = (100, 32)) -> bytes:
    """A plain black-on-white rendering of `text`, encoded as `fmt`."""
    img = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(img).text((4, 8), text, fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_lmdb(path: Path, samples: list[tuple[bytes, str]]) -> Path:
    with LmdbWriter(path) as writer:
        for image, label in samples:
            writer.add(image, label)
    return path


@pytest.fixture
def small_lmdb(tmp_path: Path) -> Path:
    words = ["hello", "World", "42", "don't", "abc", "test", "x1y2", "zebra"]
    return write_lmdb(tmp_path / "small_lmdb", [(text_image(w), w) for w in words])
