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
