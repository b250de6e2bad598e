"""What the word is drawn on: photo crops, procedural textures and flat colour (DESIGN §3).

MJSynth blends rendered words with crops of natural images and SynthTIGER textures its
backgrounds; a student that only ever saw flat colour behind words reads real crops, whose
backgrounds are brick, wood, foliage, glass and other signs, much worse. With no image data set
downloadable at run time, the photos come from what installed packages ship — scikit-image's
``skimage.data`` (astronaut, brick, coffee, grass, gravel, rocket, retina, …) and matplotlib's
sample data — plus any folder the user names (``clipocr synth --backgrounds DIR``). Photos are
loaded once per process, shrunk to `MAX_SIDE`, and cropped per sample at a random scale.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.synth.fonts import package_dirs

log = logging.getLogger(__name__)

# (package, sub-folder) pairs whose images serve as backgrounds; found without importing them.
PACKAGE_IMAGE_DIRS: tuple[tuple[str, str], ...] = (
    ("skimage", "data"),
    ("matplotlib", "mpl-data/sample_data"),
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MIN_SIDE = 64  # smaller images (icons, test frames) are not backgrounds
# Package images that are no surface a sign is painted on: a synthetic checkerboard and a
# black silhouette hide words behind hard edges no real crop shows.
EXCLUDED_IMAGES = ("chessboard", "horse")
MAX_SIDE = 512  # larger ones are shrunk once: a word's crop never needs more detail


def package_image_dirs() -> list[Path]:
    """Folders of sample images inside installed packages (absent packages are skipped)."""
    return package_dirs(list(PACKAGE_IMAGE_DIRS))


def _load(path: Path) -> Image.Image | None:
    """`path` as an RGB image no larger than MAX_SIDE, or None when it is no usable picture."""
    try:
        with Image.open(path) as img:
            if min(img.size) < MIN_SIDE:
                return None
            img.draft("RGB", (MAX_SIDE, MAX_SIDE))
            if img.mode in ("RGBA", "LA", "P"):
                # Transparent areas read as white, as a logo on a page would.
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, (0, 0), rgba)
            else:
                img = img.convert("RGB")
            img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BILINEAR)
            return img
    except Exception as err:  # PIL raises many types on odd files
        log.debug("skipping background %s: %s", path, err)
        return None


@lru_cache(maxsize=8)
def load_folder(folder: Path, exclude: tuple[str, ...] = ()) -> tuple[Image.Image, ...]:
    """Every usable image under `folder` (recursively) whose name starts with none of
    `exclude`, in path order."""
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(exclude)
    )
    return tuple(img for img in (_load(p) for p in paths) if img is not None)


def photo_bank(user_dir: Path | None = None) -> tuple[Image.Image, ...]:
    """Package photos plus `user_dir`'s; a named folder must exist and hold a usable image."""
    bank = [img for d in package_image_dirs() for img in load_folder(d, EXCLUDED_IMAGES)]
    if user_dir is not None:
        if not user_dir.is_dir():
            raise InputError(f"{user_dir}: no such backgrounds folder")
        extra = load_folder(user_dir.resolve())
        if not extra:
            raise InputError(
                f"{user_dir}: no image there of at least {MIN_SIDE}x{MIN_SIDE} px "
                f"({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        bank += extra
    return tuple(bank)


def photo_crop(
    bank: tuple[Image.Image, ...], size: tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    """A random window of a random photo, at a random scale, resized to `size`.

    The window's height is drawn log-uniformly from 24 px to the photo's height, so some
    crops show coarse structure (edges, objects) and some fine texture (grass, gravel)."""
    img = bank[int(rng.integers(len(bank)))]
    w, h = size
    pw, ph = img.size
    ch = float(np.exp(rng.uniform(np.log(min(24, ph)), np.log(ph))))
    cw = ch * w / h
    if cw > pw:  # a wide word on a narrow photo: the window takes the photo's width
        cw, ch = float(pw), pw * h / w
    x0 = rng.uniform(0, pw - cw)
    y0 = rng.uniform(0, ph - ch)
    crop = img.resize(size, Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=2.0)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


def tinted(photo: Image.Image, base: tuple[int, int, int], amount: float) -> Image.Image:
    """`photo`'s brightness detail around its mean, laid on the flat colour `base`.

    Keeps the colour statistics of the colour table while borrowing a real surface's texture
    (`amount` 0: flat `base`; 1: the photo's full contrast)."""
    lum = np.asarray(photo.convert("L"), np.float32)
    detail = (lum - lum.mean()) * amount
    out = np.asarray(base, np.float32)[None, None, :] + detail[:, :, None]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def gradient(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A linear ramp 0..1 at a random angle, (h, w) float32: shading, lighting, fills."""
    w, h = size
    phi = rng.uniform(0, 2 * np.pi)
    ramp = (
        np.cos(phi) * np.linspace(0, 1, w, dtype=np.float32)[None, :]
        + np.sin(phi) * np.linspace(0, 1, h, dtype=np.float32)[:, None]
    )
    return (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)


def texture(size: tuple[int, int], base: tuple[int, int, int], rng: np.random.Generator):
    """A procedural surface around colour `base`: blotches (stains, shading), stripes
    (corrugation, wood, blinds) or a two-colour gradient."""
    w, h = size
    kind = rng.random()
    if kind < 0.45:
        # Blotches vary mostly in brightness, a little in hue, as stains and shading do.
        gh, gw = rng.integers(2, 7), rng.integers(6, 21)
        amp = rng.uniform(15, 60)
        shade = rng.uniform(-1, 1, size=(gh, gw, 1)) + 0.35 * rng.uniform(-1, 1, size=(gh, gw, 3))
        cells = np.clip(np.asarray(base) + amp * shade, 0, 255)
        return Image.fromarray(cells.astype(np.uint8)).resize(size, Image.BICUBIC)
    ramp = gradient(size, rng)
    if kind < 0.75:
        period = rng.uniform(0.05, 0.5)
        wave = np.sin(ramp * (2 * np.pi / period) * max(w, h) / h / 4)
        shade = wave * rng.uniform(8, 40)
    else:
        shade = (ramp - 0.5) * rng.uniform(30, 120)
    out = np.asarray(base, np.float32)[None, None, :] + shade[:, :, None]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
