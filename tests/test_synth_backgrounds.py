"""Backgrounds: package photos are found, a user folder is checked, crops have the asked size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.synth.backgrounds import (
    MAX_SIDE,
    photo_bank,
    photo_crop,
    texture,
    tinted,
)


def test_package_photos_are_loaded_shrunk_and_rgb():
    bank = photo_bank()
    assert len(bank) >= 3  # matplotlib's sample data at least; scikit-image adds ~25
    assert all(img.mode == "RGB" and max(img.size) <= MAX_SIDE for img in bank)


def test_a_user_folder_adds_its_photos_and_must_hold_one(tmp_path):
    base = len(photo_bank())
    Image.new("RGB", (90, 70), (10, 200, 30)).save(tmp_path / "green.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "icon.png")  # too small: ignored
    (tmp_path / "notes.txt").write_text("not an image")
    assert len(photo_bank(tmp_path)) == base + 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image"):
        photo_bank(empty)
    with pytest.raises(InputError, match="no such"):
        photo_bank(tmp_path / "missing")


def test_crops_textures_and_tints_have_the_asked_size():
    rng = np.random.default_rng(0)
    bank = photo_bank()
    for size in [(120, 32), (17, 40), (300, 14)]:
        assert photo_crop(bank, size, rng).size == size
        assert texture(size, (100, 150, 200), rng).size == size
    flat = tinted(Image.new("RGB", (50, 20), (90, 90, 90)), (10, 20, 30), 0.5)
    assert flat.getpixel((5, 5)) == (10, 20, 30)  # no detail: the base colour exactly
