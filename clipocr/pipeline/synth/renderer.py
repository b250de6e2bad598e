"""`WordRenderer`: one word image per ``(seed, index)``, after MJSynth and SynthTIGER (DESIGN §3).

A sample is built in the layers those recipes use: a font (`fonts`) and a string (`lexicon`,
`signs`); the ink with faux bold, border and letter spacing; projective, curved and elastic
distortion (`geometry`); a background of a photo crop, a photo's texture on a real colour, a
procedural texture or flat colour (`backgrounds`) with text and background colours from real
crops (`colours`); midground text, lines and boxes; shadow, border and text (flat or gradient
fill); a photo blended over the top; then light, fade, blur, noise and JPEG (`effects`). Words
are stored at the heights real crops come in (14-64 px), so the training resize treats both
alike. What transfers is measured, not judged by eye: see `bench/synth_transfer.sh`.

Every sample is a pure function of ``(seed, index)``: its random generator is seeded from both,
so the same seed gives byte-identical images in any order, on any number of workers. The order
of the generator's draws is therefore part of the data format: changing it changes every data
set rendered from a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.synth.backgrounds import gradient, photo_bank, photo_crop, texture, tinted
from clipocr.pipeline.synth.colours import draw_pair, text_colour_for
from clipocr.pipeline.synth.effects import degrade
from clipocr.pipeline.synth.fonts import Face, discover_faces
from clipocr.pipeline.synth.geometry import draw_distortion, warp
from clipocr.pipeline.synth.lexicon import WordSampler
from clipocr.pipeline.synth.raster import (
    Glyphs,
    contrasting_color,
    dilate,
    glyphs_for,
    luma_of,
    mean_color,
    random_color,
)
from clipocr.pipeline.synth.styles import STYLES, Style

# Glyphs are drawn at one size (`raster.RENDER_PX`); the warp scales words to the output height,
# box-filtering first when shrinking below this factor.
PRESHRINK_BELOW = 0.8
RGB = tuple[int, int, int]


class WordRenderer:
    """Renders sample ``index`` of the dataset ``seed`` as ``(RGB image, label)``.

    All compositing happens in PIL on small uint8 images (pasting a colour through a mask is an
    alpha blend in C); numpy only draws parameters, textures and noise. That keeps a sample
    near a millisecond of CPU.
    """

    def __init__(
        self,
        charset: Charset,
        style: str = "clean",
        fonts_dir: Path | None = None,
        seed: int = 0,
        backgrounds_dir: Path | None = None,
    ) -> None:
        if style not in STYLES:
            raise InputError(f"unknown synth style {style!r}; choose one of {sorted(STYLES)}")
        self.style = STYLES[style]
        self.seed = seed
        self.words = WordSampler(charset)
        self.faces = discover_faces(charset.chars, fonts_dir)
        self.photos = photo_bank(backgrounds_dir)
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
        return self.render(text, rng), self.words.label(text)

    def _face(self, rng: np.random.Generator) -> Face:
        family = self.families[int(rng.integers(len(self.families)))]
        return family[int(rng.integers(len(family)))]

    def render(self, text: str, rng: np.random.Generator) -> Image.Image:
        """`text` as one word image drawn with `rng` (symbols outside the label's charset that
        the drawn face lacks are left out; the label never holds them)."""
        st = self.style
        lo, hi = st.height
        height = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi + 0.5)))))
        margins = rng.uniform(*st.margin, size=4)  # left, top, right, bottom
        ink_h = height / (1 + margins[1] + margins[3])
        face = self._face(rng)
        glyphs = glyphs_for(face)
        drawn = text
        if not set(text) <= self.words._symbols:  # decorations: keep those the face draws
            drawn = "".join(c for c in text if c in self.words._symbols or glyphs.has(c)) or text
        bold = int(rng.random() < st.p_bold) * int(rng.integers(1, 3))
        border = int(rng.random() < st.p_border) * int(rng.integers(1, 5))
        spacing = rng.uniform(*st.spacing) * glyphs.font.size
        masks = self._ink_masks(drawn, glyphs, bold, border, spacing)
        shrink = ink_h / masks[0].height
        if shrink < PRESHRINK_BELOW:
            # The warp samples bilinearly without low-pass filtering; a box filter shrinks the
            # masks first so small words do not alias.
            size = (max(1, round(masks[0].width * shrink)), max(1, round(ink_h)))
            masks = [m.resize(size, Image.BOX) for m in masks]
        dist = draw_distortion(
            rng, st.stretch, st.shear, st.rotate_deg, st.perspective,
            st.p_curve, st.curve, st.p_elastic, st.elastic,
        )  # fmt: skip
        masks = warp(masks, dist, ink_h, margins, rng)

        # Fading scales every contrast, so colours are chosen to survive the strongest fade.
        min_contrast = st.min_contrast / st.fade[0]
        img, text_rgb = self._surface(masks[0].size, min_contrast, rng)
        border_rgb = contrasting_color(luma_of(text_rgb), min_contrast, rng)
        if rng.random() < st.p_distract:
            self._midground(img, text_rgb, ink_h, margins, rng)
        if rng.random() < st.p_clutter:
            self._clutter(img, text_rgb, rng)
        if rng.random() < st.p_shadow:
            img.paste((0, 0, 0), (0, 0), self._shadow(masks[-1], rng))
        if border:
            img.paste(border_rgb, (0, 0), masks[1])
        img.paste(self._fill(img.size, text_rgb, st, rng), (0, 0), masks[0])
        if rng.random() < st.p_blend and self.photos:
            # MJSynth's blending with natural-image crops: glare, dirt, a shop window's glass.
            img = Image.blend(img, photo_crop(self.photos, img.size, rng), rng.uniform(0.08, 0.3))
        return degrade(img, st, rng)

    # -- ink -------------------------------------------------------------------------------
    @staticmethod
    def _ink_masks(
        text: str, glyphs: Glyphs, bold: int, border: int, spacing: float
    ) -> list[Image.Image]:
        """[text mask] or [text mask, text+border mask], cropped to the ink plus a pad.

        Faux bold and borders dilate the glyph mask in numpy: FreeType's stroker costs ~1 ms
        per word, several times the whole rest of the sample.
        """
        mask = glyphs.draw(text, pad=2 + bold + border, spacing=spacing)
        if bold == 0 and border == 0:
            return [mask]
        ink = np.asarray(mask)
        if bold:
            ink = dilate(ink, bold)
        masks = [ink] if border == 0 else [ink, dilate(ink, border)]
        return [Image.fromarray(m) for m in masks]

    # -- layers ----------------------------------------------------------------------------
    def _surface(
        self, size: tuple[int, int], min_contrast: float, rng: np.random.Generator
    ) -> tuple[Image.Image, RGB]:
        """The background and a text colour that goes with it.

        A real crop's colour pair for flat, textured and tinted grounds; over a photo in its
        own colours, the text colour real crops pair with backgrounds like the photo's mean."""
        st = self.style
        text_rgb, bg_rgb = draw_pair(min_contrast, rng)
        u = rng.random()
        # Without photos (no package ships any, no folder given) those grounds are textures.
        if self.photos and u < st.p_photo:
            # Softened: a sign's own ground is calmer than the scene around it.
            img = photo_crop(self.photos, size, rng)
            img = Image.blend(Image.new("RGB", size, mean_color(img)), img, rng.uniform(0.3, 0.9))
            return img, text_colour_for(mean_color(img), min_contrast, rng)
        if self.photos and u < st.p_photo + st.p_tinted:
            photo = photo_crop(self.photos, size, rng)
            return tinted(photo, bg_rgb, rng.uniform(0.1, 0.4)), text_rgb
        if u < st.p_photo + st.p_tinted + st.p_texture:
            return texture(size, bg_rgb, rng), text_rgb
        return Image.new("RGB", size, bg_rgb), text_rgb

    @staticmethod
    def _fill(size: tuple[int, int], text_rgb: RGB, st: Style, rng: np.random.Generator):
        """What the ink is painted with: one colour, or (p_fill) a ramp from it to a lighter
        or darker shade (lit letters, metal, printed gradients)."""
        if rng.random() >= st.p_fill:
            return text_rgb
        shift = rng.uniform(40, 110) * (1 if luma_of(text_rgb) < 128 else -1)
        other = np.clip(np.asarray(text_rgb, np.float32) + shift, 0, 255)
        ramp = gradient(size, rng)[:, :, None]
        out = np.asarray(text_rgb, np.float32) * (1 - ramp) + other * ramp
        return Image.fromarray(out.astype(np.uint8))

    @staticmethod
    def _shadow(mask: Image.Image, rng: np.random.Generator) -> Image.Image:
        """The (outer) text mask shifted by a few pixels and softened, at partial opacity."""
        dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
        shadow = Image.new("L", mask.size, 0)
        shadow.paste(mask, (dx, dy))
        shadow = shadow.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        opacity = rng.uniform(0.4, 0.9)
        return shadow.point([round(v * opacity) for v in range(256)])

    def _midground(
        self,
        img: Image.Image,
        text_rgb: RGB,
        ink_h: float,
        margins: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        """SynthTIGER's midground text: the lines above and below and the neighbouring words,
        cut by the crop's edges, in the word's colour (the same sign) or another."""
        w, h = img.size
        canvas = Image.new("L", (w, h), 0)
        top = margins[1] * ink_h
        for _ in range(int(rng.integers(1, 3))):
            text = self.words.sample(rng)
            word = glyphs_for(self._face(rng)).draw(text, pad=0)
            size_h = ink_h * rng.uniform(0.6, 1.1)
            size = (max(1, round(word.width * size_h / word.height)), max(1, round(size_h)))
            word = word.resize(size, Image.BOX)
            gap = rng.uniform(0.1, 0.4) * ink_h
            where = rng.random()
            if where < 0.35:  # the line above
                x, y = rng.uniform(-0.5, 0.8) * w, top - gap - size[1]
            elif where < 0.7:  # the line below
                x, y = rng.uniform(-0.5, 0.8) * w, top + ink_h + gap
            elif where < 0.85:  # the word before
                x, y = margins[0] * ink_h - gap - size[0], top
            else:  # the word after
                x, y = w - margins[2] * ink_h + gap, top
            canvas.paste(255, (round(x), round(y)), word)
        color = text_rgb if rng.random() < 0.6 else random_color(rng)
        img.paste(color, (0, 0), canvas)

    @staticmethod
    def _clutter(img: Image.Image, text_rgb: RGB, rng: np.random.Generator) -> None:
        """Lines and boxes (sign edges, underlines, frames) across the crop."""
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
        color = text_rgb if rng.random() < 0.5 else random_color(rng)
        img.paste(color, (0, 0), canvas)
