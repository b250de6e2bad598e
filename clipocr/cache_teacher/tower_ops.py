"""The pieces of the teacher's forward pass: stage split, positional-embedding adaptation, block
runs, the text tower at any width, and the storage form (DESIGN §4, §5).

Kept apart from `teacher` (which assembles them into the `Teacher` module) so the teacher
pre-training code can run the same text tower; `teacher` re-exports every name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipocr.pipeline.errors import InputError

POS_EMBED_MODES = ("crop", "interpolate")
STORAGE_FORMS = ("normalised", "raw")
LN_EPS = 1e-5


def stage_blocks(depth: int) -> tuple[int, int, int]:
    """1-based block counts after which stages 1..3 end (the official ``depth//4`` split)."""
    if depth < 4:
        raise InputError(f"a tower of {depth} blocks cannot be split into 4 stages")
    return (depth // 4, 2 * depth // 4, 3 * depth // 4)


def adapt_pos_embed(
    pos: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], mode: str
) -> torch.Tensor:
    """Class-token + grid positional embedding ``(1 + H·W, D)`` moved to another patch grid.

    ``crop`` keeps the top-left ``dst`` window (the official code's choice: a 32×128 word is the
    top-left corner of a square CLIP image); ``interpolate`` resizes the whole grid bicubically
    (with antialiasing, as open_clip's own `resize_pos_embed`). Same grid: unchanged copy.
    """
    if mode not in POS_EMBED_MODES:
        raise ValueError(f"pos_embed must be one of {POS_EMBED_MODES}, not {mode!r}")
    (sh, sw), (dh, dw) = src_grid, dst_grid
    if pos.shape[0] != 1 + sh * sw:
        raise ValueError(f"positional embedding has {pos.shape[0]} rows, grid {sh}×{sw} needs more")
    cls_pos, grid = pos[:1], pos[1:].reshape(sh, sw, -1)
    if (sh, sw) == (dh, dw):
        return pos.detach().clone()
    if mode == "crop":
        if dh > sh or dw > sw:
            raise ValueError(f"cannot crop a {dh}×{dw} window from a {sh}×{sw} grid")
        grid = grid[:dh, :dw]
    else:
        img = grid.permute(2, 0, 1).unsqueeze(0).float()
        img = F.interpolate(img, size=(dh, dw), mode="bicubic", align_corners=False, antialias=True)
        grid = img[0].permute(1, 2, 0).to(pos.dtype)
    return torch.cat([cls_pos, grid.reshape(dh * dw, -1)]).detach().clone()


def run_blocks(
    transformer: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    taps: tuple[int, ...],
    n: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the first `n` residual blocks on batch-first `x`, keeping the stream after `taps`."""
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    kept = []
    for i, block in enumerate(transformer.resblocks[:n], start=1):
        x = block(x, attn_mask=mask)
        if i in taps:
            kept.append(x if batch_first else x.transpose(0, 1))
    return (x if batch_first else x.transpose(0, 1)), kept


def to_storage_form(feats: dict[str, torch.Tensor], form: str) -> dict[str, torch.Tensor]:
    """Raw taps → the cache's storage form (DESIGN §5), all float32.

    ``normalised``: stage taps ``(x − mean)/√(var + 1e-5)`` per token (LayerNorm without affine;
    all-zero padding rows stay zero) and `text_emb` L2-normalised. ``raw``: unchanged values.
    """
    if form not in STORAGE_FORMS:
        raise ValueError(f"storage form must be one of {STORAGE_FORMS}, not {form!r}")
    out = {}
    for key, value in feats.items():
        if key.startswith(("image_s", "text_s")):
            value = value.float()
            if form == "normalised":
                value = F.layer_norm(value, value.shape[-1:], eps=LN_EPS)
        elif key == "text_emb":
            value = value.float()
            if form == "normalised":
                value = F.normalize(value, dim=-1)
        out[key] = value
    return out


def _project(x: torch.Tensor, proj: nn.Module | torch.Tensor | None) -> torch.Tensor:
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def text_forward(
    text: nn.Module, tokens: torch.Tensor, lengths: torch.Tensor, taps: tuple[int, ...] = ()
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Causal text tower on ``[SOT, c1..cL, EOT, pad…]`` ids of any width ≥ max(L) + 2.

    `text` is an open_clip CLIP (or its `TextTransformer`). Because attention is causal, the
    features of the kept tokens do not depend on how many pad positions follow, so the width can
    be 27 instead of 77, or just the batch's longest label + 2 while training. Returns the
    residual streams after the blocks in `taps` and the projected EOT embedding.
    """
    dtype = text.transformer.get_cast_dtype()
    width = tokens.shape[1]
    x = text.token_embedding(tokens).to(dtype) + text.positional_embedding[:width].to(dtype)
    mask = torch.full((width, width), float("-inf"), device=x.device).triu_(1)
    depth = len(text.transformer.resblocks)
    x, kept = run_blocks(text.transformer, x, mask, taps, depth)
    x = text.ln_final(x)
    eot = x[torch.arange(x.shape[0], device=x.device), lengths + 1]
    return kept, _project(eot, text.text_projection)
