"""Convolutional stem: the token grid of the patch embedding it replaces, inside timm's ViT."""

from __future__ import annotations

import pytest
import torch
from timm.layers import PatchEmbed

from clipocr.train_student.model import Student, StudentConfig, student_config
from clipocr.train_student.stem import ConvStem


@pytest.mark.parametrize("patch", [(32, 4), (4, 8), (8, 8)])
def test_conv_stem_yields_the_patch_grid(patch: tuple[int, int]) -> None:
    stem = ConvStem(img_size=(32, 128), patch_size=patch, embed_dim=24)
    linear = PatchEmbed(img_size=(32, 128), patch_size=patch, embed_dim=24)
    x = torch.randn(2, 3, 32, 128)
    out = stem(x)
    assert stem.num_patches == linear.num_patches and stem.grid_size == linear.grid_size
    assert out.shape == linear(x).shape == (2, linear.num_patches, 24)


def test_conv_stem_tokens_are_row_major_over_the_grid() -> None:
    """Token k of a 1×32 grid sees only columns near 4k: moving a blob moves its token."""
    torch.manual_seed(0)
    stem = ConvStem(img_size=(32, 128), patch_size=(32, 4), embed_dim=16).eval()
    x = torch.zeros(1, 3, 32, 128)
    y = x.clone()
    y[..., 100:104] = 1.0  # touches columns 100–103 → token 25 (and its conv neighbours)
    with torch.no_grad():
        diff = (stem(y) - stem(x)).abs().sum(-1)[0]
    assert int(diff.argmax()) in (24, 25, 26)
    assert float(diff[:16].sum()) == 0.0  # far-away tokens unchanged


def test_student_with_conv_stem_uses_it_inside_timm() -> None:
    model = Student(student_config("test", stem="conv"))
    assert isinstance(model.encoder.patch_embed, ConvStem)
    tgt_in, _ = model.charset.batch_targets(["ab", "c"])
    out = model(torch.randn(2, 3, 32, 128), tgt_in)
    assert [s.shape for s in out.enc_stages] == [(2, 129, 32)] * 3


def test_unknown_stem_and_odd_patch_are_refused() -> None:
    with pytest.raises(ValueError, match="stem"):
        StudentConfig(stem="resnet")
    with pytest.raises(ValueError, match="power-of-two"):
        ConvStem(img_size=(32, 120), patch_size=(32, 6))
