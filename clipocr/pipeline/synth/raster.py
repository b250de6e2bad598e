"""Drawing primitives the renderer reuses for every sample: cached glyph bitmaps, a fixed colour
palette and noise bank, the perspective solve and a grey-level dilation.

Each exists because its direct form (a FreeType draw per word, fresh HSV or normal draws per
sample, FreeType's stroker) would cost more than the rest of a sample; the tables are seeded by
`RENDERER_SEED`, so they belong to the renderer and never change between data sets.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipocr.pipeline.synth.fonts import Face

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
PALETTE_SIZE = 4096
RENDERER_SEED = 20230707  # fixed: palette and noise bank belong to the renderer, not a dataset
NOISE_BANK_SIZE = 1 << 20  # > the largest image (64 px x 25 chars) by far
# Every face renders at one size, so its glyph bitmaps are cached once (see `Glyphs`); the
# renderer's warp then scales words to the output height.
RENDER_PX = 48
NOT_A_GLYPH = "\U0010fffd"  # private use: no face maps it, so every face draws its .notdef


class Glyphs:
    """One face at one size, with every glyph rendered once and reused.

    FreeType re-rasterises every glyph on every PIL draw call (0.1-1.5 ms a word; variable and
    many-contour faces are the slowest); pasting cached glyph bitmaps at their advances costs a
    few microseconds each. Kerning is lost, as it already is with PIL's basic layout for faces
    that kern through GPOS.
    """

    def __init__(self, font: ImageFont.FreeTypeFont) -> None:
        self.font = font
        self._cache: dict[str, tuple[Image.Image | None, int, int, float]] = {}
        self._notdef: tuple[tuple[int, int], bytes] | None = None  # None: it draws nothing
        self._notdef_known = False

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

    def has(self, ch: str) -> bool:
        """Whether the face draws `ch` with a glyph of its own, not the .notdef box it draws
        for code points it lacks (compared with the glyph of a private-use code point).

        Cheaper than reading the face's character map with fontTools (tens of ms a face), and
        cached with the glyph."""
        if not self._notdef_known:
            mask, *_ = self._glyph(NOT_A_GLYPH)
            self._notdef = None if mask is None else (mask.size, mask.tobytes())
            self._notdef_known = True
        mask, *_ = self._glyph(ch)
        return mask is not None and (mask.size, mask.tobytes()) != self._notdef

    def draw(self, text: str, pad: int, spacing: float = 0.0) -> Image.Image:
        """`text` as an "L" ink mask cropped to its ink, plus `pad` px on every side; `spacing`
        px are added after every glyph's advance (letter spacing; negative: tighter)."""
        placed = []
        pen = 0.0
        for ch in text:
            mask, left, top, advance = self._glyph(ch)
            if mask is not None:
                placed.append((mask, round(pen) + left, top))
            pen += advance + spacing
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
def glyphs_for(face: Face) -> Glyphs:
    return Glyphs(face.load(RENDER_PX))


@lru_cache(maxsize=1)
def palette() -> tuple[list[tuple[int, int, int]], np.ndarray]:
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
def noise_bank() -> np.ndarray:
    """NOISE_BANK_SIZE fixed standard normals; a sample's noise is a random window of them.

    Drawing fresh normals for every pixel costs more than the rest of the degradation.
    """
    return np.random.default_rng(RENDERER_SEED).standard_normal(NOISE_BANK_SIZE, np.float32)


def luma_of(rgb: tuple[int, int, int]) -> float:
    return float(np.dot(rgb, LUMA))


def random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return palette()[0][int(rng.integers(PALETTE_SIZE))]


def contrasting_color(
    luma: float, min_contrast: float, rng: np.random.Generator
) -> tuple[int, int, int]:
    """A random colour whose luma differs from `luma` by at least `min_contrast`."""
    colors, lumas = palette()
    picks = rng.integers(PALETTE_SIZE, size=16)
    ok = np.flatnonzero(np.abs(lumas[picks] - luma) >= min_contrast)
    if len(ok):
        return colors[int(picks[ok[0]])]
    # Near mid-grey few colours contrast enough; black or white always do (up to 127 levels).
    return (0, 0, 0) if luma > 127 else (255, 255, 255)


def mean_color(img: Image.Image) -> tuple[int, ...]:
    return img.resize((1, 1), Image.BOX).getpixel((0, 0))


def perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE data mapping output points `dst` (4x2) back to input points `src`."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return tuple(np.linalg.solve(np.array(rows), src.reshape(8)).tolist())


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
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
