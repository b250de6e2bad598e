"""A convolutional stem that timm's `VisionTransformer` takes as its ``embed_layer``.

Why: a linear patch embedding (one matrix per 32×4 column) learns to see strokes slowly, and on a
CPU budget the student's encoder never starts reading (issue 13: a CTC head on such tokens stays
all-blank). A few strided 3×3 convolutions ("early convolutions help transformers see better",
Xiao et al. 2021) give the tokens local, translation-equivariant features from the first step.
It replaces only the patch embedding; the ViT blocks, class token and position embedding stay
timm's. An addition to the paper, off in its ``small`` preset.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn


def _halvings(n: int) -> int:
    steps = int(math.log2(n))
    if 2**steps != n:
        raise ValueError(f"conv stem needs power-of-two patch sides, got {n}")
    return steps


class ConvStem(nn.Module):
    """Strided 3×3 conv + BatchNorm + ReLU blocks down to the patch grid, then a 1×1 projection.

    Each block halves the height and/or width until the total stride equals ``patch_size``, so
    the token grid (and hence the position embedding, the encoder taps and the distillation
    heads) is exactly that of the linear patch embedding it replaces. Channels double per block
    from 16 up to ``embed_dim``; cost stays a fraction of the transformer's.
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        patch_size: tuple[int, int],
        in_chans: int = 3,
        embed_dim: int = 128,
        bias: bool = True,
        base_width: int = 16,
        **_: Any,  # timm passes dynamic_img_pad / device / dtype; none applies here
    ) -> None:
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = tuple(patch_size)
        self.grid_size = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.dynamic_img_pad = False
        down_h, down_w = _halvings(patch_size[0]), _halvings(patch_size[1])
        layers: list[nn.Module] = []
        chans = in_chans
        for i in range(max(down_h, down_w, 1)):
            out = min(base_width * 2**i, embed_dim)
            stride = (2 if i < down_h else 1, 2 if i < down_w else 1)
            layers += [
                nn.Conv2d(chans, out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            chans = out
        layers.append(nn.Conv2d(chans, embed_dim, 1, bias=bias))
        self.proj = nn.Sequential(*layers)

    def feat_ratio(self, as_scalar: bool = False) -> tuple[int, int] | int:
        return max(self.patch_size) if as_scalar else self.patch_size

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, N, D)`` tokens, row-major over the grid like `PatchEmbed`."""
        return self.proj(x).flatten(2).transpose(1, 2)
