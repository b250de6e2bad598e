"""`WordRenderer`: one word image per ``(seed, index)``, in the MJSynth manner (DESIGN §3).

MJSynth renders words in ~1,400 fonts with random colours, borders, shadows, projective
distortion, blur and noise, and crops tightly around the word; this does the same with the faces
pip packages ship (`fonts`), procedural backgrounds (no image data set is available offline) and
the ranges of a `styles.Style`.

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
from clipocr.pipeline.synth.fonts import Face, discover_faces
from clipocr.pipeline.synth.lexicon import WordSampler
from clipocr.pipeline.synth.raster import (
    Glyphs,
    contrasting_color,
    dilate,
    glyphs_for,
    luma_of,
    mean_color,
    noise_bank,
    perspective_coeffs,
    random_color,
)
from clipocr.pipeline.synth.styles import STYLES

# Glyphs are drawn at one size (`raster.RENDER_PX`); the warp scales words to the output height,
# box-filtering first when shrinking below this factor.
PRESHRINK_BELOW = 0.8


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
        glyphs = glyphs_for(self._face(rng))
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
        text_rgb = contrasting_color(luma_of(mean_color(img)), min_contrast, rng)
        border_rgb = contrasting_color(luma_of(text_rgb), min_contrast, rng)
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
    def _ink_masks(text: str, glyphs: Glyphs, bold: int, border: int) -> list[Image.Image]:
        """[text mask] or [text mask, text+border mask], cropped to the ink plus a pad.

        Faux bold and borders dilate the glyph mask in numpy: FreeType's stroker costs ~1 ms
        per word, several times the whole rest of the sample.
        """
        mask = glyphs.draw(text, pad=2 + bold + border)
        if bold == 0 and border == 0:
            return [mask]
        ink = np.asarray(mask)
        if bold:
            ink = dilate(ink, bold)
        masks = [ink] if border == 0 else [ink, dilate(ink, border)]
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
        coeffs = perspective_coeffs(quad, src)
        return [
            m.transform((out_w, out_h), Image.Transform.PERSPECTIVE, coeffs, Image.BILINEAR)
            for m in masks
        ]

    # -- layers ----------------------------------------------------------------------------
    @staticmethod
    def _background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
        """Solid, gradient or blotchy (low-frequency noise) RGB background."""
        w, h = size
        base = random_color(rng)
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
            img.paste(random_color(rng), (0, 0), Image.fromarray(ramp.astype(np.uint8)))
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
            word = glyphs_for(self._face(rng)).draw(extra, pad=0)
            size = (max(1, round(word.width * ink_h / word.height)), max(1, round(ink_h)))
            word = word.resize(size, Image.BOX)
            gap = rng.uniform(0.1, 0.3) * ink_h  # a word space
            if rng.random() < 0.5:
                x = margins[0] * ink_h - gap - word.width
            else:
                x = w - margins[2] * ink_h + gap
            canvas.paste(255, (round(x), round(margins[1] * ink_h)), word)
        color = text_rgb if rng.random() < 0.5 else random_color(rng)
        img.paste(color, (0, 0), canvas)

    # -- degradation -----------------------------------------------------------------------
    def _degrade(self, img: Image.Image, fade: float, rng: np.random.Generator) -> Image.Image:
        """Contrast fade, blur, low resolution and noise, in the order a camera adds them."""
        st = self.style
        if fade < 1.0:
            img = Image.blend(Image.new("RGB", img.size, mean_color(img)), img, fade)
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
            bank, n = noise_bank(), img.height * img.width
            start = int(rng.integers(len(bank) - n))
            noise = bank[start : start + n].reshape(img.height, img.width, 1)
            noisy = np.asarray(img, np.float32) + noise * np.float32(sigma)
            img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        return img
