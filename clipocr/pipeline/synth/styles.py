"""The two rendering styles: ranges each sample's parameters are drawn from (DESIGN §3).

Both follow the MJSynth and SynthTIGER recipes (colours from real crops, photo and texture
backgrounds, borders and shadows, projective, curved and elastic distortion, midground text,
blur, noise, JPEG) and store words at the sizes real crops come in, so the same resize blurs
both. ``hard`` draws the ranges IC15's incidental shots show: small and low-resolution words,
strong distortion, motion blur, low contrast, clutter and neighbouring text. ``clean`` keeps the
real colours, fonts, case and surfaces but draws words large, sharp and contrasted: a student
trained for the demo's few minutes first has to learn to read at all, and with clean words as
degraded as the hard ones the plain baseline had not left its loss plateau after the demo's
2,300 steps (transfer probe, bench/synth_transfer.sh). The ranges live apart from the renderer
so a new style is a table entry, not a code change.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Style:
    """Ranges the renderer draws each sample's parameters from (uniformly unless noted)."""

    height: tuple[int, int]  # output height in px, drawn log-uniformly (real crops: 16-100)
    margin: tuple[float, float]  # per-side margin, fraction of the word's ink height
    rotate_deg: float  # max |in-plane rotation|
    shear: float  # max |horizontal shear| (slanted text)
    perspective: float  # max corner displacement, fraction of the ink height
    stretch: float  # max |log| horizontal stretch
    p_curve: float  # curved baseline (arched or sagging)
    curve: float  # max sag at the word's ends, fraction of the ink height
    p_elastic: float  # smooth random wobble of the ink (hand painting, uneven surfaces)
    elastic: float  # its max std, fraction of the ink height
    spacing: tuple[float, float]  # extra letter spacing, fraction of the ink height
    min_contrast: float  # min |luma(text) - luma(background)|, 0..255
    fade: tuple[float, float]  # global contrast factor range (1 = untouched)
    p_photo: float  # background: a photo crop in its own colours
    p_tinted: float  # background: a photo's texture on a real crop's background colour
    p_texture: float  # background: a procedural texture; otherwise flat colour
    p_fill: float  # text filled with a gradient instead of one colour
    p_blend: float  # a photo crop blended over the finished word (glare, dirt, glass)
    p_border: float
    p_shadow: float
    p_bold: float  # faux bold: the glyph mask dilated by 1-2 px
    p_light: float  # a gain ramp across the crop (light falling off, a shadow edge)
    p_blur: float
    blur_radius: tuple[float, float]  # box radius at 32 px height, scaled with the image
    p_motion: float  # a short motion-blur streak
    p_lowres: float  # downscale then upscale back: a low-resolution capture
    lowres_scale: tuple[float, float]
    noise_sigma: tuple[float, float]
    p_jpeg: float  # a round trip through low-quality JPEG
    jpeg_quality: tuple[int, int]
    p_clutter: float  # lines and boxes (sign edges, underlines) across the crop
    p_distract: float  # midground text: neighbouring lines and words, cut by the crop


STYLES: dict[str, Style] = {
    "clean": Style(
        height=(24, 64),
        margin=(0.02, 0.2),
        rotate_deg=3.0,
        shear=0.15,
        perspective=0.06,
        stretch=0.2,
        p_curve=0.05,
        curve=0.2,
        p_elastic=0.05,
        elastic=0.02,
        spacing=(-0.02, 0.1),
        min_contrast=80.0,
        fade=(1.0, 1.0),
        p_photo=0.05,
        p_tinted=0.15,
        p_texture=0.25,
        p_fill=0.1,
        p_blend=0.0,
        p_border=0.15,
        p_shadow=0.15,
        p_bold=0.1,
        p_light=0.15,
        p_blur=0.3,
        blur_radius=(0.3, 0.8),
        p_motion=0.0,
        p_lowres=0.0,
        lowres_scale=(1.0, 1.0),
        noise_sigma=(0.0, 4.0),
        p_jpeg=0.1,
        jpeg_quality=(50, 90),
        p_clutter=0.0,
        p_distract=0.1,
    ),
    "hard": Style(
        height=(16, 56),
        margin=(-0.02, 0.35),
        rotate_deg=12.0,
        shear=0.35,
        perspective=0.2,
        stretch=0.35,
        p_curve=0.15,
        curve=0.35,
        p_elastic=0.2,
        elastic=0.03,
        spacing=(-0.05, 0.25),
        min_contrast=60.0,
        fade=(0.7, 1.0),
        p_photo=0.25,
        p_tinted=0.25,
        p_texture=0.25,
        p_fill=0.15,
        p_blend=0.1,
        p_border=0.2,
        p_shadow=0.2,
        p_bold=0.15,
        p_light=0.5,
        p_blur=0.35,
        blur_radius=(0.3, 1.0),
        p_motion=0.1,
        p_lowres=0.25,
        lowres_scale=(0.5, 0.85),
        noise_sigma=(1.0, 8.0),
        p_jpeg=0.5,
        jpeg_quality=(25, 75),
        p_clutter=0.3,
        p_distract=0.4,
    ),
}
