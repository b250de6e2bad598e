"""Decoding: the default is PARSeq's test decode bit for bit; `draft` is training's shortcut."""

import io

import numpy as np
import pytest
import torch
from conftest import text_image
from PIL import Image, ImageDraw, ImageFont
from torchvision import transforms as T

from clipocr.pipeline.preprocess import decode_image, load_uint8, normalize


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
