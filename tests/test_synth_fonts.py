"""Font discovery: enough readable faces from pip packages alone, symbol faces left out."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipocr.pipeline.charset import CHARSETS
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.synth.fonts import discover_faces, package_font_dirs, required_symbols

C36, C62 = CHARSETS["36"], CHARSETS["62"]


def _ink(face, text: str) -> np.ndarray:
    font = face.load(32)
    img = Image.new("L", (40 * len(text), 64), 0)
    ImageDraw.Draw(img).text((4, 4), text, fill=255, font=font)
    return np.asarray(img)


def test_pip_packages_give_at_least_20_families_for_charset_36():
    faces = discover_faces(C36)
    assert len(faces) >= 20
    assert len({f.family for f in faces}) >= 20
    sources = " ".join(str(p) for p in package_font_dirs())
    for package in ("font_roboto", "font_lato", "deckr_fonts", "matplotlib", "reportlab"):
        assert package in sources
    names = {f.name for f in faces}
    assert {"DejaVuSans.ttf", "Roboto-Regular.ttf", "Lato-Regular.ttf", "cmr10.ttf"} <= names


def test_discovery_is_cached():
    assert discover_faces(C36) is discover_faces(C36)


def test_symbol_and_placeholder_faces_are_left_out():
    names = " ".join(f.name.lower() for f in discover_faces(C36))
    for bad in ("cmex10", "cmsy10", "stixsiz", "stixnonuni", "emoji", "lastresort", "monofett"):
        assert bad not in names
    assert "sy______.pfb" not in names and "zd______.pfb" not in names  # Symbol, Dingbats


def test_every_face_draws_every_letter_and_digit_in_both_cases():
    for face in discover_faces(C36):
        font = face.load(16)
        for ch in required_symbols(C36):
            assert font.getmask(ch).getbbox() is not None, (face.name, ch)


def test_variable_fonts_are_expanded_into_distinct_instances():
    faces = {f.name: f for f in discover_faces(C36)}
    thin, black = faces["Inter[opsz,wght].ttf:Thin"], faces["Inter[opsz,wght].ttf:Black"]
    assert thin.path == black.path
    assert _ink(black, "Hamburg").sum() > 2 * _ink(thin, "Hamburg").sum()


def test_duplicate_files_of_one_style_are_kept_once():
    names = [f.name for f in discover_faces(C36)]
    assert "SourceSansPro-Regular.ttf" in names
    assert "SourceSansPro-Regular.otf" not in names


def test_small_caps_faces_only_serve_case_folded_charsets():
    assert any(f.family == "Amatic SC" for f in discover_faces(C36))
    assert not any(f.family == "Amatic SC" for f in discover_faces(C62))


def test_user_fonts_dir_adds_its_faces(tmp_path):
    src = next(f for f in discover_faces(C36) if f.name == "DejaVuSerif.ttf").path
    shutil.copy(src, tmp_path / "MyFace.ttf")
    faces = discover_faces(C36, tmp_path)
    mine = [f for f in faces if f.name == "MyFace.ttf"]
    assert len(mine) == 1 and mine[0].path.parent == tmp_path.resolve()


@pytest.mark.parametrize("setup", ["missing", "empty", "symbols only"])
def test_unusable_fonts_dir_is_an_input_error(tmp_path, setup):
    folder = tmp_path / "fonts"
    if setup != "missing":
        folder.mkdir()
    if setup == "symbols only":
        mpl_ttf = next(p for p in package_font_dirs() if p.name == "ttf")
        shutil.copy(mpl_ttf / "cmex10.ttf", folder / "cmex10.ttf")
    with pytest.raises(InputError, match=str(folder)):
        discover_faces(C36, Path(folder))
