"""Rendered word data sets: a stream of JPEG samples, or a whole STR LMDB with its metadata.

Samples are stored as JPEG q90 RGB, as MJSynth's and most real crops are, so the data path
(decode, resize) is the one real data takes.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import LmdbWriter
from clipocr.pipeline.synth.renderer import WordRenderer
from clipocr.pipeline.synth.styles import STYLES

JPEG_QUALITY = 90
META_NAME = "synth.json"


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def iter_samples(
    num: int,
    seed: int,
    charset: Charset,
    style: str = "clean",
    fonts_dir: Path | None = None,
    start: int = 0,
    backgrounds_dir: Path | None = None,
) -> Iterator[tuple[bytes, str]]:
    """Yield ``(JPEG bytes, label)`` for samples ``start .. start+num-1`` of dataset `seed`."""
    renderer = WordRenderer(charset, style, fonts_dir, seed, backgrounds_dir=backgrounds_dir)
    for index in range(start, start + num):
        img, label = renderer.sample(index)
        yield encode_jpeg(img), label


@dataclass(frozen=True)
class RenderResult:
    """What `render_lmdb` made, as ``synth.json`` records it (the fields are its keys)."""

    num_samples: int
    seed: int
    style: str
    charset: str
    fonts: list[str]  # face names used, sorted
    fonts_dir: str | None
    font_families: int
    backgrounds: int  # photos the backgrounds were cropped from (package ones + the user's)
    backgrounds_dir: str | None
    lexicon: str
    image_format: str
    images_per_s: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def render_lmdb(
    out: Path,
    num: int,
    seed: int,
    charset: Charset,
    style: str = "clean",
    fonts_dir: Path | None = None,
    progress: bool = True,
    backgrounds_dir: Path | None = None,
) -> RenderResult:
    """Render `num` word images into a new STR LMDB at `out` plus ``out/synth.json``.

    The LMDB appears only when complete (`LmdbWriter`); the result is what synth.json holds:
    counts, seed, style, charset, face files used, background photos, lexicon, speed.
    """
    out = Path(out)
    if num < 1:
        raise InputError(f"--num must be at least 1, got {num}")
    with LmdbWriter(out) as writer:
        renderer = WordRenderer(charset, style, fonts_dir, seed, backgrounds_dir=backgrounds_dir)
        start = time.perf_counter()
        # closed on the way out, so an error starts a line of its own
        with tqdm(total=num, disable=not progress, unit="img", desc="synth") as bar:
            for index in range(num):
                img, label = renderer.sample(index)
                writer.add(encode_jpeg(img), label)
                bar.update(1)
        seconds = time.perf_counter() - start
        result = RenderResult(
            num_samples=num,
            seed=seed,
            style=style,
            charset=charset.name,
            fonts=[face.name for face in renderer.faces],
            fonts_dir=None if fonts_dir is None else str(fonts_dir),
            font_families=len(renderer.families),
            backgrounds=len(renderer.photos),
            backgrounds_dir=None if backgrounds_dir is None else str(backgrounds_dir),
            lexicon=renderer.words.description,
            image_format=f"JPEG q{JPEG_QUALITY} RGB, height %d-%d px" % STYLES[style].height,
            images_per_s=num / seconds,
            seconds=seconds,
        )
        writer.write_text(META_NAME, json.dumps(result.to_dict(), indent=2) + "\n")  # with it
    return result
