"""The two rendering styles: ranges each sample's parameters are drawn from (DESIGN §3).

``clean`` is MJSynth-like moderate variation; ``hard`` adds stronger projective distortion and
rotation, heavier blur, low resolution, noise, low contrast and background clutter (curved
baselines are not rendered in either). The ranges live apart from the renderer so a new style is
a table entry, not a code change.
"""

from __future__ import annotations

from dataclasses import dataclass


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
