"""Synthetic word images in the MJSynth manner (DESIGN §3 "Synthetic data").

MJSynth renders words from a ~90 k-word lexicon in ~1,400 fonts with random colours, borders,
shadows, projective distortion, blur and noise, and crops tightly around the word. This module
does the same with the faces pip packages ship (`clipocr.pipeline.fonts`), wordfreq's English
list as lexicon, and procedural backgrounds (no image data set is available offline), so that
tests, the demo and benchmarks get realistic-looking, *labelled* word crops at hundreds per
second on one core.

Every sample is a pure function of ``(seed, index)``: its random generator is seeded from both,
so the same seed gives byte-identical images in any order, on any number of workers, and a
consumer can render sample *i* on the fly without rendering the ones before it.

Two styles: ``clean`` is MJSynth-like moderate variation; ``hard`` adds stronger projective
distortion and rotation, heavier blur, low resolution, noise, low contrast and background clutter
(curved baselines are not rendered in either).
"""

from __future__ import annotations

import io
import json
import re
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.fonts import Face, discover_faces
from clipocr.pipeline.lmdb_io import LmdbWriter

LEXICON_SIZE = 50_000  # wordfreq's English top-N, sampled uniformly (MJSynth: ~90 k words)
P_RANDOM_STRING = 0.1
P_NUMBER = 0.1
CASE_WEIGHTS = {"lower": 0.5, "title": 0.3, "upper": 0.2}
JPEG_QUALITY = 90
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
PALETTE_SIZE = 4096
RENDERER_SEED = 20230707  # fixed: palette and noise bank belong to the renderer, not a dataset
NOISE_BANK_SIZE = 1 << 20  # > the largest image (64 px x 25 chars) by far
# Every face renders at one size, so its glyph bitmaps are cached once (see `_Glyphs`); the warp
# then scales words to the output height, box-filtering first when shrinking below 0.8x.
RENDER_PX = 48
PRESHRINK_BELOW = 0.8


@dataclass(frozen=True)
class Style:
    """Ranges the renderer draws each sample's parameters from (uniformly unless noted)."""

    height: tuple[int, int]  # output height in px
    margin: tuple[float, float]  # per-side margin, fraction of the word's ink height
    rotate_deg: float  # max |in-plane rotation|
    shear: float  # max |horizontal shear| (slanted text)
    perspective: float  # max corner displacement, fraction of the ink height
    stretch: float  # max |log| horizontal stretch
    min_contrast: float  # min |luma(text) - luma(background)|, 0..255
    fade: tuple[float, float]  # global contrast factor range (1 = untouched)
    p_border: float
    p_shadow: float
    p_bold: float  # faux bold: the glyph mask dilated by 1-2 px
    p_blur: float
    blur_radius: tuple[float, float]
    p_lowres: float  # downscale then upscale back: a low-resolution capture
    lowres_scale: tuple[float, float]
    noise_sigma: tuple[float, float]
    p_clutter: float  # lines, boxes and cut-off neighbouring glyphs behind the word


STYLES: dict[str, Style] = {
    "clean": Style(
        height=(32, 64),
        margin=(0.02, 0.2),
        rotate_deg=3.0,
        shear=0.15,
        perspective=0.06,
        stretch=0.15,
        min_contrast=90.0,
        fade=(1.0, 1.0),
        p_border=0.15,
        p_shadow=0.15,
        p_bold=0.1,
        p_blur=0.4,
        blur_radius=(0.3, 0.9),
        p_lowres=0.0,
        lowres_scale=(1.0, 1.0),
        noise_sigma=(0.0, 5.0),
        p_clutter=0.0,
    ),
    "hard": Style(
        height=(32, 64),
        margin=(0.0, 0.3),
        rotate_deg=10.0,
        shear=0.35,
        perspective=0.18,
        stretch=0.3,
        min_contrast=70.0,
        fade=(0.6, 1.0),
        p_border=0.2,
        p_shadow=0.2,
        p_bold=0.15,
        p_blur=0.6,
        blur_radius=(0.4, 1.4),
        p_lowres=0.35,
        lowres_scale=(0.45, 0.8),
        noise_sigma=(2.0, 12.0),
        p_clutter=0.6,
    ),
}


# -- words --------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _lexicon(allowed: frozenset[str], max_len: int) -> tuple[str, ...]:
    """wordfreq's top English words drawable in `allowed` symbols.

    Tokens with two or more consecutive digits are dropped: wordfreq replaces every digit of a
    multi-digit number by 0 ("2024" -> "0000"), so they are placeholders, not words. Numbers
    are generated separately.
    """
    from wordfreq import top_n_list

    smashed = re.compile(r"\d\d")
    return tuple(
        w
        for w in top_n_list("en", LEXICON_SIZE)
        if 0 < len(w) <= max_len and set(w) <= allowed and not smashed.search(w)
    )


class WordSampler:
    """Draws label strings: lexicon words in lower/Title/UPPER case, random strings, numbers.

    Every string uses only symbols the charset keeps (upper-case letters are case-folded by a
    lower-case charset, not removed), so `charset.prepare` accepts every one of them.
    """

    def __init__(self, charset: Charset) -> None:
        self.charset = charset
        symbols = set(charset.chars) | set(charset.chars.swapcase())
        self.letters = "".join(c for c in string.ascii_letters if c in symbols)
        self.digits = "".join(c for c in string.digits if c in symbols)
        self.punct = "".join(c for c in string.punctuation if c in symbols)
        self.words = _lexicon(frozenset(symbols), charset.max_len)
        if not self.words or not self.digits:
            raise ValueError(f"charset {charset.name} has too few symbols to render words from")
        self._cases = list(CASE_WEIGHTS)
        self._case_p = np.array(list(CASE_WEIGHTS.values()))

    @property
    def description(self) -> str:
        return (
            f"wordfreq en top {LEXICON_SIZE} ({len(self.words)} words drawable in charset "
            f"{self.charset.name}; lower/Title/UPPER {'/'.join(map(str, CASE_WEIGHTS.values()))})"
            f" + {P_RANDOM_STRING:.0%} random strings + {P_NUMBER:.0%} numbers"
        )

    def sample(self, rng: np.random.Generator) -> str:
        u = rng.random()
        if u < P_RANDOM_STRING:
            return self._random_string(rng)
        if u < P_RANDOM_STRING + P_NUMBER:
            return self._number(rng)
        word = self.words[rng.integers(len(self.words))]
        case = self._cases[rng.choice(len(self._cases), p=self._case_p)]
        return word.upper() if case == "upper" else word.title() if case == "title" else word

    def _random_string(self, rng: np.random.Generator) -> str:
        pool = self.letters + self.digits
        if self.punct and rng.random() < 0.3:
            pool += self.punct
        n = int(rng.integers(1, 11))
        return "".join(pool[i] for i in rng.integers(len(pool), size=n))

    def _number(self, rng: np.random.Generator) -> str:
        n = int(rng.integers(1, 8))
        digits = "".join(self.digits[i] for i in rng.integers(len(self.digits), size=n))
        text = (digits.lstrip("0") or "0") if rng.random() < 0.8 else digits
        return self._decorate_number(text, rng) if self.punct else text

    def _decorate_number(self, text: str, rng: np.random.Generator) -> str:
        """Prices, decimals, times, percentages… where the charset has the punctuation."""
        forms = [
            lambda t: t,
            lambda t: f"{t[:-2] or '0'}.{t[-2:]:0>2}",
            lambda t: f"${t}",
            lambda t: f"{t}%",
            lambda t: f"{int(t) % 24}:{int(rng.integers(60)):02d}",
            lambda t: f"{int(t):,}",
            lambda t: f"-{t}",
            lambda t: f"#{t}",
        ]
        out = forms[int(rng.integers(len(forms)))](text)
        return out if set(out) <= set(self.digits + self.punct) else text


# -- rendering ----------------------------------------------------------------------------------


class _Glyphs:
    """One face at one size, with every glyph rendered once and reused.

    FreeType re-rasterises every glyph on every PIL draw call (0.1-1.5 ms a word; variable and
    many-contour faces are the slowest); pasting cached glyph bitmaps at their advances costs a
    few microseconds each. Kerning is lost, as it already is with PIL's basic layout for faces
    that kern through GPOS.
    """

    def __init__(self, font: ImageFont.FreeTypeFont) -> None:
        self.font = font
        self._cache: dict[str, tuple[Image.Image | None, int, int, float]] = {}

    def _glyph(self, ch: str) -> tuple[Image.Image | None, int, int, float]:
        """(ink mask or None, x offset, y offset from the ascender line, advance)."""
        hit = self._cache.get(ch)
        if hit is None:
            left, top, right, bottom = self.font.getbbox(ch)
            mask = None
            if right > left and bottom > top:
                mask = Image.new("L", (right - left, bottom - top), 0)
                ImageDraw.Draw(mask).text((-left, -top), ch, fill=255, font=self.font)
            hit = self._cache[ch] = (mask, left, top, self.font.getlength(ch))
        return hit

    def draw(self, text: str, pad: int) -> Image.Image:
        """`text` as an "L" ink mask cropped to its ink, plus `pad` px on every side."""
        placed = []
        pen = 0.0
        for ch in text:
            mask, left, top, advance = self._glyph(ch)
            if mask is not None:
                placed.append((mask, round(pen) + left, top))
            pen += advance
        if not placed:
            return Image.new("L", (2 * pad + 1, 2 * pad + 1), 0)
        x0 = min(x for _, x, _ in placed)
        y0 = min(y for _, _, y in placed)
        x1 = max(x + m.width for m, x, _ in placed)
        y1 = max(y + m.height for m, _, y in placed)
        canvas = Image.new("L", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), 0)
        for mask, x, y in placed:
            canvas.paste(255, (x - x0 + pad, y - y0 + pad), mask)
        return canvas


@lru_cache(maxsize=4096)
def _glyphs(face: Face) -> _Glyphs:
    return _Glyphs(face.load(RENDER_PX))


@lru_cache(maxsize=1)
def _palette() -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """PALETTE_SIZE fixed RGB colours and their lumas, drawn once in HSV with saturation biased
    low, as most real surfaces and inks are (uniform RGB looks garish). Picking from a table
    costs a fraction of converting fresh HSV draws for every sample."""
    gen = np.random.default_rng(RENDERER_SEED)
    h, s, v = gen.random(PALETTE_SIZE), gen.random(PALETTE_SIZE) ** 2, gen.random(PALETTE_SIZE)
    i = (h * 6).astype(int) % 6
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    rgb = np.rint(np.stack([r, g, b], axis=1) * 255).astype(np.uint8)
    return [tuple(int(x) for x in c) for c in rgb], rgb @ LUMA


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """NOISE_BANK_SIZE fixed standard normals; a sample's noise is a random window of them.

    Drawing fresh normals for every pixel costs more than the rest of the degradation.
    """
    return np.random.default_rng(RENDERER_SEED).standard_normal(NOISE_BANK_SIZE, np.float32)


def _luma(rgb: tuple[int, int, int]) -> float:
    return float(np.dot(rgb, LUMA))


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return _palette()[0][int(rng.integers(PALETTE_SIZE))]


def _contrasting_color(
    luma: float, min_contrast: float, rng: np.random.Generator
) -> tuple[int, int, int]:
    """A random colour whose luma differs from `luma` by at least `min_contrast`."""
    colors, lumas = _palette()
    picks = rng.integers(PALETTE_SIZE, size=16)
    ok = np.flatnonzero(np.abs(lumas[picks] - luma) >= min_contrast)
    if len(ok):
        return colors[int(picks[ok[0]])]
    # Near mid-grey few colours contrast enough; black or white always do (up to 127 levels).
    return (0, 0, 0) if luma > 127 else (255, 255, 255)


def _mean_color(img: Image.Image) -> tuple[int, ...]:
    return img.resize((1, 1), Image.BOX).getpixel((0, 0))


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE data mapping output points `dst` (4x2) back to input points `src`."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return tuple(np.linalg.solve(np.array(rows), src.reshape(8)).tolist())


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation by a (2r+1)^2 square: a running maximum down the rows, then the same
    pass on the transpose."""
    out = mask
    for _ in range(2):
        padded = np.pad(out, ((radius, radius), (0, 0)))
        n = out.shape[0]
        acc = padded[:n].copy()
        for s in range(1, 2 * radius + 1):
            np.maximum(acc, padded[s : s + n], out=acc)
        out = acc.T
    return np.ascontiguousarray(out)


class WordRenderer:
    """Renders sample ``index`` of the dataset ``seed`` as ``(RGB image, label)``.

    All compositing happens in PIL on uint8 images (pasting a colour through a mask is an
    alpha blend in C); numpy only solves the warp and adds noise. That keeps a sample near a
    millisecond of CPU.
    """

    def __init__(
        self,
        charset: Charset,
        style: str = "clean",
        fonts_dir: Path | None = None,
        seed: int = 0,
    ) -> None:
        if style not in STYLES:
            raise InputError(f"unknown synth style {style!r}; choose one of {sorted(STYLES)}")
        self.style = STYLES[style]
        self.seed = seed
        self.words = WordSampler(charset)
        self.faces = discover_faces(charset.chars, fonts_dir)
        # Sample a family first, then a face of it, so Roboto's 36 weights/widths do not drown
        # the families that ship one file.
        families: dict[str, list[Face]] = {}
        for face in self.faces:
            families.setdefault(face.family, []).append(face)
        self.families = [families[k] for k in sorted(families)]

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def sample(self, index: int) -> tuple[Image.Image, str]:
        rng = self.rng(index)
        text = self.words.sample(rng)
        return self.render(text, rng), text

    def _face(self, rng: np.random.Generator) -> Face:
        family = self.families[int(rng.integers(len(self.families)))]
        return family[int(rng.integers(len(family)))]

    def render(self, text: str, rng: np.random.Generator) -> Image.Image:
        """`text` (charset symbols, no spaces) as one word image drawn with `rng`.

        Ink masks -> projective warp to the output size -> background, colours, clutter, shadow,
        border, text -> fade, blur or low resolution, noise.
        """
        st = self.style
        height = int(rng.integers(st.height[0], st.height[1] + 1))
        margins = rng.uniform(*st.margin, size=4)  # left, top, right, bottom
        ink_h = height / (1 + margins[1] + margins[3])
        glyphs = _glyphs(self._face(rng))
        bold = int(rng.random() < st.p_bold) * int(rng.integers(1, 3))
        border = int(rng.random() < st.p_border) * int(rng.integers(1, 5))
        masks = self._ink_masks(text, glyphs, bold, border)
        shrink = ink_h / masks[0].height
        if shrink < PRESHRINK_BELOW:
            # The perspective warp samples bilinearly without low-pass filtering; a box
            # filter shrinks the masks first so small words do not alias.
            size = (max(1, round(masks[0].width * shrink)), max(1, round(ink_h)))
            masks = [m.resize(size, Image.BOX) for m in masks]
        masks = self._warp(masks, ink_h, margins, rng)

        img = self._background(masks[0].size, rng)
        # Fading scales every contrast by `fade`, so colours are chosen to survive it.
        fade = rng.uniform(*st.fade)
        min_contrast = st.min_contrast / fade
        text_rgb = _contrasting_color(_luma(_mean_color(img)), min_contrast, rng)
        border_rgb = _contrasting_color(_luma(text_rgb), min_contrast, rng)
        if rng.random() < st.p_clutter:
            self._clutter(img, text_rgb, ink_h, margins, rng)
        if rng.random() < st.p_shadow:
            img.paste((0, 0, 0), (0, 0), self._shadow(masks[-1], rng))
        if border:
            img.paste(border_rgb, (0, 0), masks[1])
        img.paste(text_rgb, (0, 0), masks[0])
        return self._degrade(img, fade, rng)

    # -- geometry --------------------------------------------------------------------------
    @staticmethod
    def _ink_masks(text: str, glyphs: _Glyphs, bold: int, border: int) -> list[Image.Image]:
        """[text mask] or [text mask, text+border mask], cropped to the ink plus a pad.

        Faux bold and borders dilate the glyph mask in numpy: FreeType's stroker costs ~1 ms
        per word, several times the whole rest of the sample.
        """
        mask = glyphs.draw(text, pad=2 + bold + border)
        if bold == 0 and border == 0:
            return [mask]
        ink = np.asarray(mask)
        if bold:
            ink = _dilate(ink, bold)
        masks = [ink] if border == 0 else [ink, _dilate(ink, border)]
        return [Image.fromarray(m) for m in masks]

    def _warp(
        self,
        masks: list[Image.Image],
        ink_h: float,
        margins: np.ndarray,
        rng: np.random.Generator,
    ) -> list[Image.Image]:
        """Stretch, shear, rotate and jitter the corners; scale the result to the output height."""
        st = self.style
        w, h = masks[0].size
        src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
        quad = src * [np.exp(rng.uniform(-st.stretch, st.stretch)), 1.0]
        quad[:, 0] += rng.uniform(-st.shear, st.shear) * (h - quad[:, 1])
        theta = np.deg2rad(rng.uniform(-st.rotate_deg, st.rotate_deg))
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        quad = (quad - quad.mean(0)) @ rot.T
        quad += rng.uniform(-st.perspective, st.perspective, size=(4, 2)) * h
        quad -= quad.min(0)
        span = quad.max(0)
        scale = ink_h / span[1]
        quad = quad * scale + [margins[0] * ink_h, margins[1] * ink_h]
        out_w = max(8, int(np.ceil(span[0] * scale + (margins[0] + margins[2]) * ink_h)))
        out_h = int(np.ceil(ink_h * (1 + margins[1] + margins[3])))
        coeffs = _perspective_coeffs(quad, src)
        return [
            m.transform((out_w, out_h), Image.Transform.PERSPECTIVE, coeffs, Image.BILINEAR)
            for m in masks
        ]

    # -- layers ----------------------------------------------------------------------------
    @staticmethod
    def _background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
        """Solid, gradient or blotchy (low-frequency noise) RGB background."""
        w, h = size
        base = _random_color(rng)
        img = Image.new("RGB", size, base)
        kind = rng.random()
        if kind < 0.4:
            return img
        if kind < 0.7:
            phi = rng.uniform(0, 2 * np.pi)
            ramp = (
                np.cos(phi) * np.linspace(0, 1, w, dtype=np.float32)[None, :]
                + np.sin(phi) * np.linspace(0, 1, h, dtype=np.float32)[:, None]
            )
            ramp = (ramp - ramp.min()) * (rng.uniform(0.3, 1.0) * 255 / max(np.ptp(ramp), 1e-6))
            img.paste(_random_color(rng), (0, 0), Image.fromarray(ramp.astype(np.uint8)))
            return img
        # Blotches vary mostly in brightness, a little in hue, as stains and shading do.
        gh, gw = rng.integers(2, 7), rng.integers(6, 21)
        amp = rng.uniform(15, 60)
        shade = rng.uniform(-1, 1, size=(gh, gw, 1)) + 0.35 * rng.uniform(-1, 1, size=(gh, gw, 3))
        cells = np.clip(np.asarray(base) + amp * shade, 0, 255)
        return Image.fromarray(cells.astype(np.uint8)).resize(size, Image.BICUBIC)

    @staticmethod
    def _shadow(mask: Image.Image, rng: np.random.Generator) -> Image.Image:
        """The (outer) text mask shifted by a few pixels and softened, at partial opacity."""
        dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
        shadow = Image.new("L", mask.size, 0)
        shadow.paste(mask, (dx, dy))
        shadow = shadow.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        opacity = rng.uniform(0.4, 0.9)
        return shadow.point([round(v * opacity) for v in range(256)])

    def _clutter(
        self,
        img: Image.Image,
        text_rgb: tuple[int, int, int],
        ink_h: float,
        margins: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        """Lines and boxes (sign edges, underlines) across the crop, and the glyphs of a
        neighbouring word in the margin, cut by the crop edge."""
        w, h = img.size
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            x0, x1 = rng.uniform(-0.2, 1.2, size=2) * w
            y0, y1 = rng.uniform(-0.2, 1.2, size=2) * h
            width = int(rng.integers(1, max(2, h // 10)))
            if rng.random() < 0.5:
                draw.line([(x0, y0), (x1, y1)], fill=int(rng.integers(60, 256)), width=width)
            else:
                box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
                draw.rectangle(box, outline=int(rng.integers(60, 256)), width=width)
        if rng.random() < 0.5:
            pool = self.words.letters + self.words.digits
            extra = "".join(pool[i] for i in rng.integers(len(pool), size=3))
            word = _glyphs(self._face(rng)).draw(extra, pad=0)
            size = (max(1, round(word.width * ink_h / word.height)), max(1, round(ink_h)))
            word = word.resize(size, Image.BOX)
            gap = rng.uniform(0.1, 0.3) * ink_h  # a word space
            if rng.random() < 0.5:
                x = margins[0] * ink_h - gap - word.width
            else:
                x = w - margins[2] * ink_h + gap
            canvas.paste(255, (round(x), round(margins[1] * ink_h)), word)
        color = text_rgb if rng.random() < 0.5 else _random_color(rng)
        img.paste(color, (0, 0), canvas)

    # -- degradation -----------------------------------------------------------------------
    def _degrade(self, img: Image.Image, fade: float, rng: np.random.Generator) -> Image.Image:
        """Contrast fade, blur, low resolution and noise, in the order a camera adds them."""
        st = self.style
        if fade < 1.0:
            img = Image.blend(Image.new("RGB", img.size, _mean_color(img)), img, fade)
        # Low resolution is a blur of its own: the two together erase thin faces.
        if rng.random() < st.p_lowres:
            w, h = img.size
            s = rng.uniform(*st.lowres_scale)
            small = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
            img = small.resize((w, h), Image.BILINEAR)
        elif rng.random() < st.p_blur:
            # One box pass: defocus spreads light over a disc, closer to a box than to a
            # Gaussian, and PIL's Gaussian costs three such passes.
            img = img.filter(ImageFilter.BoxBlur(rng.uniform(*st.blur_radius)))
        sigma = rng.uniform(*st.noise_sigma)
        if sigma > 0.5:
            # One grey noise plane: sensor noise is mostly luminance once JPEG's chroma
            # subsampling has run, and it costs a third of per-channel noise.
            bank, n = _noise_bank(), img.height * img.width
            start = int(rng.integers(len(bank) - n))
            noise = bank[start : start + n].reshape(img.height, img.width, 1)
            noisy = np.asarray(img, np.float32) + noise * np.float32(sigma)
            img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        return img


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# -- datasets -----------------------------------------------------------------------------------


def iter_samples(
    num: int,
    seed: int,
    charset: Charset,
    style: str = "clean",
    fonts_dir: Path | None = None,
    start: int = 0,
) -> Iterator[tuple[bytes, str]]:
    """Yield ``(JPEG bytes, label)`` for samples ``start .. start+num-1`` of dataset `seed`."""
    renderer = WordRenderer(charset, style, fonts_dir, seed)
    for index in range(start, start + num):
        img, label = renderer.sample(index)
        yield encode_jpeg(img), label


def render_lmdb(
    out: Path,
    num: int,
    seed: int,
    charset: Charset,
    style: str = "clean",
    fonts_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Render `num` word images into a new STR LMDB at `out` plus ``out/synth.json``.

    The LMDB appears only when complete (`LmdbWriter`); the returned metadata is what
    synth.json holds: counts, seed, style, charset, face files used, lexicon, speed.
    """
    out = Path(out)
    if num < 1:
        raise InputError(f"--num must be at least 1, got {num}")
    with LmdbWriter(out) as writer:
        renderer = WordRenderer(charset, style, fonts_dir, seed)
        start = time.perf_counter()
        for index in tqdm(range(num), disable=not progress, unit="img", desc="synth"):
            img, label = renderer.sample(index)
            writer.add(encode_jpeg(img), label)
        seconds = time.perf_counter() - start
    meta = {
        "num_samples": num,
        "seed": seed,
        "style": style,
        "charset": charset.name,
        "fonts": [face.name for face in renderer.faces],
        "fonts_dir": None if fonts_dir is None else str(fonts_dir),
        "font_families": len(renderer.families),
        "lexicon": renderer.words.description,
        "image_format": f"JPEG q{JPEG_QUALITY} RGB, height %d-%d px" % STYLES[style].height,
        "images_per_s": num / seconds,
        "seconds": seconds,
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
