"""Decoding: the default is PARSeq's test decode bit for bit; `draft` is training's shortcut."""

import functools
import io

import numpy as np
import pytest
import torch
from conftest import text_image
from PIL import Image, ImageDraw, ImageFont
from torchvision import transforms as T

from clipocr.pipeline.preprocess import decode_image, decode_uint8, load_uint8, normalize


def large_jpeg(size: tuple[int, int] = (1600, 400)) -> bytes:
    """A big scene-text-like crop (W×H): a colour gradient, noise and a large word, as JPEG."""
    w, h = size
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, 255 - (x + y) / 2], axis=2)
    noisy = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(noisy)
    ImageDraw.Draw(img).text((40, 60), "Large", fill=(10, 10, 10), font=ImageFont.load_default(260))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def reference(data: bytes) -> torch.Tensor:
    """What PARSeq's test loader feeds its model, as uint8 (3, 32, 128)."""
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((128, 32), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def test_default_decode_is_the_reference_protocol_bit_for_bit() -> None:
    data = large_jpeg()
    assert torch.equal(load_uint8(data), reference(data))
    assert decode_image(data).size == (1600, 400)  # decoded at its stored size


def test_default_decode_equals_parseqs_torchvision_transform() -> None:
    """PARSeq's `SceneTextDataModule.get_transform` (no augmentation) on `Image.open().convert`."""
    data = large_jpeg()
    parseq = T.Compose(
        [T.Resize((32, 128), T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(0.5, 0.5)]
    )
    expected = parseq(Image.open(io.BytesIO(data)).convert("RGB"))
    assert torch.equal(normalize(load_uint8(data)[None])[0], expected)


def test_draft_is_a_different_faster_path_for_large_jpegs_only() -> None:
    data = large_jpeg()
    assert decode_image(data, draft=True).size == (400, 100)  # libjpeg's 1/4 scale
    drafted = load_uint8(data, draft=True)
    assert drafted.shape == (3, 32, 128) and not torch.equal(drafted, reference(data))
    for small in (text_image("png"), text_image("jpeg", fmt="JPEG")):
        assert torch.equal(load_uint8(small, draft=True), load_uint8(small))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_any_mode_is_converted_to_rgb_as_parseq_does(mode: str) -> None:
    buf = io.BytesIO()
    Image.open(io.BytesIO(text_image("mode"))).convert(mode).save(buf, format="PNG")
    data = buf.getvalue()
    assert decode_image(data).mode == "RGB"
    assert torch.equal(load_uint8(data), reference(data))


@functools.lru_cache
def _source(size: tuple[int, int]) -> Image.Image:
    return Image.open(io.BytesIO(large_jpeg(size))).convert("RGB")


def _encoded(mode: str, fmt: str, size: tuple[int, int]) -> bytes:
    img = _source(size).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("draft", [False, True])
@pytest.mark.parametrize(
    "mode,fmt",
    [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("L", "PNG"), ("LA", "PNG"),
     ("RGBA", "PNG"), ("P", "PNG"), ("1", "PNG"), ("I;16", "PNG")],
)  # fmt: skip
def test_decode_uint8_is_decode_then_resize_bit_for_bit(mode: str, fmt: str, draft: bool) -> None:
    """The batch decode (grey resized as one plane, no copy of an RGB image, written into a
    given buffer) gives the pixels of `decode_image` → `resize` → RGB array, in every mode."""
    for size in ((300, 70), (600, 160), (128, 32), (60, 20)):  # down, JPEG draft at 1/2, =, up
        data = _encoded(mode, fmt, size)
        img = decode_image(data, draft=draft)
        img = img if img.size == (128, 32) else img.resize((128, 32), Image.BICUBIC)
        want = np.asarray(img).transpose(2, 0, 1).copy()
        out = np.full((3, 32, 128), 7, dtype=np.uint8)
        assert decode_uint8(data, draft=draft, out=out) is out
        np.testing.assert_array_equal(out, want)
        assert torch.equal(load_uint8(data, draft=draft), torch.from_numpy(want))


# --- modes whose plain convert("RGB") loses the picture (issue 23) -------------------------------

WORD = (slice(10, 22), slice(20, 80))  # rows, columns of the dark "word" bar in `_page`


def _page(dark: float, light: float, dtype: type = np.float64) -> np.ndarray:
    """A 32×100 light page with a dark bar where a word would be."""
    page = np.full((32, 100), light, dtype=np.float64)
    page[WORD] = dark
    return page.astype(dtype)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _with_alpha(mode: str) -> Image.Image:
    """A dark bar, opaque, on a fully transparent page whose hidden colour is black: what a
    plain convert("RGB") shows as a black bar on black."""
    alpha = Image.fromarray(_page(255, 0, np.uint8))
    black = Image.new("L", (100, 32), 0)
    if mode == "LA":
        return Image.merge("LA", (black, alpha))
    return Image.merge("RGBA", (black, black, black, alpha))


def _images_in_every_mode() -> dict[str, bytes]:
    p = Image.new("P", (100, 32), 0)  # index 0: black, the transparent page; 1: a dark grey
    p.putpalette([0, 0, 0, 40, 40, 40] + [0] * (254 * 3))
    ImageDraw.Draw(p).rectangle([20, 10, 79, 21], fill=1)
    return {
        "I;16": _encode(Image.fromarray(_page(3000, 60000, np.uint16)), "PNG"),
        "I;16B": _encode(Image.fromarray(_page(3000, 60000, np.uint16)), "TIFF"),
        "I": _encode(Image.fromarray(_page(2000, 60000, np.int32)), "TIFF"),
        "F": _encode(Image.fromarray(_page(0.1, 0.9, np.float32)), "TIFF"),
        "1": _encode(Image.fromarray(_page(0, 255, np.uint8)).convert("1"), "PNG"),
        "LA": _encode(_with_alpha("LA"), "PNG"),
        "RGBA": _encode(_with_alpha("RGBA"), "PNG"),
        "P+transparency": _encode(p, "PNG", transparency=0),
        "CMYK": _encode(Image.fromarray(_page(20, 235, np.uint8)).convert("CMYK"), "JPEG"),
    }


@pytest.mark.parametrize("mode", list(_images_in_every_mode()))
def test_every_mode_pil_opens_reads_as_a_dark_word_on_a_light_page(mode: str) -> None:
    """16-bit grey read as a white page (PIL clips to 255) and a transparent page whose hidden
    colour is black as a black one; every mode must keep the dark bar dark on light."""
    data = _images_in_every_mode()[mode]
    rgb = np.asarray(decode_image(data)).astype(float)
    assert rgb.shape == (32, 100, 3)
    word, page = rgb[WORD].mean(), np.delete(rgb, range(8, 24), axis=0).mean()
    assert word < 70 and page > 200, (mode, word, page)
    pixels = load_uint8(data).float()  # the batch path agrees: resized, still dark on light
    assert pixels[:, 14:18, 40:80].mean() < 70 and pixels[:, :4].mean() > 200


def test_a_light_word_on_a_transparent_page_is_put_on_black() -> None:
    alpha = Image.fromarray(_page(255, 0, np.uint8))
    white = Image.new("L", (100, 32), 255)
    data = _encode(Image.merge("LA", (white, alpha)), "PNG")
    rgb = np.asarray(decode_image(data)).astype(float)
    assert rgb[WORD].mean() > 200 and rgb[:6].mean() < 50


def test_opaque_alpha_and_16_bit_scaling_are_exact() -> None:
    """An opaque RGBA image is PIL's convert("RGB") bit for bit; 16 bits are divided by 257."""
    data = _encode(Image.open(io.BytesIO(text_image("opaque"))).convert("RGBA"), "PNG")
    assert torch.equal(load_uint8(data), reference(data))
    ramp = np.arange(0, 65536, 257, dtype=np.uint16)[None, :].repeat(2, 0)  # 0, 257, … 65535
    grey = np.asarray(decode_image(_encode(Image.fromarray(ramp), "PNG")))[..., 0]
    np.testing.assert_array_equal(grey[0], np.arange(256))


@pytest.mark.parametrize(
    ("array", "dark", "light"),
    [
        (_page(20, 235, np.uint8), 20, 235),
        (np.stack([_page(20, 235, np.uint8)] * 3, -1), 20, 235),
        (_page(0.0, 1.0, np.float32), 0, 255),
        (_page(257 * 10, 257 * 250, np.uint16), 10, 250),
        (_page(0, 1, np.uint8).astype(bool), 0, 255),
    ],
    ids=["grey", "rgb", "unit-float", "uint16", "bool"],
)
def test_numpy_images_become_pil_images_by_their_range(array, dark, light) -> None:
    from clipocr.pipeline.preprocess import array_image

    grey = np.asarray(array_image(array).convert("L"))
    assert grey[WORD].min() == grey[WORD].max() == dark
    assert grey[0, 0] == light


@pytest.mark.parametrize("shape", [(3, 32, 100), (32, 100, 2), (2, 3, 32, 100), (0, 5)])
def test_arrays_that_are_no_image_are_refused(shape) -> None:
    from clipocr.pipeline.preprocess import array_image

    with pytest.raises(ValueError, match="image array"):
        array_image(np.zeros(shape, dtype=np.uint8))
