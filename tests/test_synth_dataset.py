"""Rendered data sets: deterministic JPEG streams, a readable LMDB and its synth.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import LmdbReader
from clipocr.pipeline.preprocess import decode_image
from clipocr.pipeline.synth.dataset import RenderResult, iter_samples, render_lmdb
from clipocr.pipeline.synth.styles import STYLES

CS36 = Charset.from_name("36")


@pytest.fixture(scope="module")
def clean24() -> list[tuple[bytes, str]]:
    return list(iter_samples(24, seed=3, charset=CS36))


def test_same_seed_same_bytes_other_seed_other_bytes(clean24):
    assert list(iter_samples(24, seed=3, charset=CS36)) == clean24
    other = list(iter_samples(24, seed=4, charset=CS36))
    assert sum(a != b for a, b in zip(clean24, other, strict=True)) >= 22


def test_a_sample_depends_on_seed_and_index_only(clean24):
    assert list(iter_samples(5, seed=3, charset=CS36, start=10)) == clean24[10:15]


def test_images_are_rgb_jpeg_words_of_natural_aspect(clean24):
    for data, _ in clean24:
        assert data[:2] == b"\xff\xd8"  # JPEG
        img = decode_image(data)
        assert img.mode == "RGB"
        lo, hi = STYLES["clean"].height
        assert lo - 1 <= img.height <= hi + 2 and img.width >= 8
    spread = np.stack([np.asarray(decode_image(d).resize((64, 16))) for d, _ in clean24]).std()
    assert spread > 20  # not blank


def test_render_lmdb_writes_readable_lmdb_and_metadata(tmp_path, clean24):
    out = tmp_path / "synth"
    meta = render_lmdb(out, num=24, seed=3, charset=CS36, progress=False)
    reader = LmdbReader(out)
    records = [(image, label) for _, image, label in reader.iter_raw()]
    assert len(reader) == 24 and records == clean24
    assert isinstance(meta, RenderResult)
    assert json.loads((out / "synth.json").read_text()) == meta.to_dict()
    assert RenderResult(**json.loads((out / "synth.json").read_text())) == meta
    assert meta.num_samples == 24 and meta.seed == 3 and meta.style == "clean"
    assert meta.charset == "36" and len(meta.fonts) >= 20
    assert "wordfreq" in meta.lexicon and meta.images_per_s > 0 and meta.seconds > 0
    assert meta.backgrounds >= 3 and meta.backgrounds_dir is None  # matplotlib ships three


def test_render_lmdb_refuses_bad_input(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="already exists"):
        render_lmdb(tmp_path / "taken", num=2, seed=0, charset=CS36, progress=False)
    with pytest.raises(InputError, match="style"):
        render_lmdb(tmp_path / "a", num=2, seed=0, charset=CS36, style="fancy", progress=False)
    with pytest.raises(InputError, match="--num"):
        render_lmdb(tmp_path / "b", num=0, seed=0, charset=CS36, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert set(STYLES) == {"clean", "hard"}
