"""What the camera and the file format do to a word after it is printed (DESIGN §3): uneven
light, fading, defocus, motion blur, low resolution, sensor noise and JPEG blocking.

Real crops, IC15's above all, are blurred, smeared, noisy and compressed; a student trained on
crisp renders reads those badly. Each effect is drawn per sample from a `styles.Style` and
applied in the order a camera applies them, all on small uint8 images (a few tens of µs each).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from clipocr.pipeline.synth.backgrounds import gradient
from clipocr.pipeline.synth.raster import mean_color, noise_bank
from clipocr.pipeline.synth.styles import Style

LOWRES_MIN_H = 10


def motion_kernel(length: int, angle: float) -> ImageFilter.Kernel:
    """A 5x5 (or 3x3) kernel spreading light along a line of `length` px at `angle` radians:
    a camera or subject moving during the exposure. PIL's `Kernel` runs in C."""
    size = 3 if length <= 3 else 5
    weights = np.zeros((size, size), np.float32)
    c = size // 2
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length):
        x, y = int(round(c + t * np.cos(angle))), int(round(c + t * np.sin(angle)))
        weights[min(max(y, 0), size - 1), min(max(x, 0), size - 1)] += 1
    weights /= weights.sum()
    return ImageFilter.Kernel((size, size), weights.ravel().tolist(), scale=1)


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    """`img` after a round trip through JPEG at `quality`: blocking and ringing around edges."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def degrade(img: Image.Image, st: Style, rng: np.random.Generator) -> Image.Image:
    """Light, fade, blur (defocus, motion or low resolution), noise and JPEG, drawn from `st`."""
    if rng.random() < st.p_light:
        # Light falling off across the sign (or a shadow edge): a gain ramp on every channel.
        lo = rng.uniform(0.6, 0.95)
        gain = lo + (1 - lo) * gradient(img.size, rng)
        lit = np.asarray(img, np.float32) * gain[:, :, None]
        img = Image.fromarray(lit.astype(np.uint8))
    fade = rng.uniform(*st.fade)
    if fade < 1.0:
        img = Image.blend(Image.new("RGB", img.size, mean_color(img)), img, fade)
    # Low resolution is a blur of its own: the two together erase thin faces.
    u = rng.random()
    if u < st.p_lowres:
        w, h = img.size
        # Never below LOWRES_MIN_H px high: fewer rows than that erase the word (no label).
        s = max(rng.uniform(*st.lowres_scale), LOWRES_MIN_H / h)
        small = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
        img = small.resize((w, h), Image.BILINEAR)
    elif u < st.p_lowres + st.p_motion:
        length = int(rng.integers(2, 6))
        img = img.filter(motion_kernel(length, rng.uniform(0, np.pi)))
    elif u < st.p_lowres + st.p_motion + st.p_blur:
        # One box pass: defocus spreads light over a disc, closer to a box than to a
        # Gaussian, and PIL's Gaussian costs three such passes.
        img = img.filter(ImageFilter.BoxBlur(rng.uniform(*st.blur_radius) * img.height / 32))
    sigma = rng.uniform(*st.noise_sigma)
    if sigma > 0.5:
        # One grey noise plane: sensor noise is mostly luminance once JPEG's chroma
        # subsampling has run, and it costs a third of per-channel noise.
        bank, n = noise_bank(), img.height * img.width
        start = int(rng.integers(len(bank) - n))
        noise = bank[start : start + n].reshape(img.height, img.width, 1)
        noisy = np.asarray(img, np.float32) + noise * np.float32(sigma)
        img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if rng.random() < st.p_jpeg:
        img = jpeg(img, int(rng.integers(st.jpeg_quality[0], st.jpeg_quality[1] + 1)))
    return img
