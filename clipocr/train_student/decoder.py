"""Decoder layers of the student: the standard pre-norm layer and PARSeq's two-stream layer.

The paper's own layer (PARSeq's layer as CLIP-OCR uses it: the content stream never updated) is
`official_decoder.OfficialLayer`, the `small` preset's; these two are CPU-budget options (issue 13).

Both expose a teacher-forced ``forward`` (all positions at once) and a ``step`` that computes one
new position with a K/V cache, so `Student.generate` costs one position per step.

* `DecoderLayer` (standard): the query at position t is the previous character's embedding plus
  a position query; causal self-attention, cross-attention to the image, MLP.
* `TwoStreamLayer` (PARSeq's `DecoderLayer`): a *query stream* that starts from position queries
  alone and attends to a *content stream* (embeddings of BOS, c1 …, causal mask) and to the image.
  Both streams share the attention and MLP weights (separate pre-norms), as in PARSeq; the content
  stream is not updated in the last layer, whose content output nobody reads. Only the forward
  (left-to-right) permutation is trained, as the official CLIP-OCR code does.
"""

from __future__ import annotations

import torch.nn.functional as tfn
from torch import Tensor, nn


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class Attention(nn.Module):
    """Multi-head attention on `F.scaled_dot_product_attention` with K/V exposed for caching.

    Written out (rather than `nn.MultiheadAttention`) so generation can keep the self-attention
    K/V of past positions and the cross-attention K/V of the image, and compute only the new
    position at each step.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        q = _split_heads(self.q(x), self.heads)
        p = self.dropout if self.training else 0.0
        out = tfn.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
        return self.proj(_merge_heads(out))


class KVCache:
    """Self-attention keys/values of the positions decoded so far, one buffer for all steps.

    Allocated on first use so it takes the dtype the projections produce (autocast included).
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, t: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store position `t`'s ``(B, H, 1, d)`` K/V; return K/V of positions ``0..t``."""
        if self.k is None or self.v is None:
            shape = (k.shape[0], k.shape[1], self.steps, k.shape[3])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        self.k[:, :, t : t + 1] = k
        self.v[:, :, t : t + 1] = v
        return self.k[:, :, : t + 1], self.v[:, :, : t + 1]


class _Sublayers(nn.Module):
    """Self-attention, cross-attention and MLP with their pre-norms (norm1 is the caller's)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.self_attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def stream(
        self,
        x: Tensor,
        h: Tensor,
        kv: tuple[Tensor, Tensor],
        mem: tuple[Tensor, Tensor],
        causal: bool,
    ) -> Tensor:
        """Residual update of `x` whose normed self-attention query is `h`, over keys `kv`."""
        x = x + self.drop(self.self_attn.attend(h, *kv, causal=causal))
        x = x + self.drop(self.cross_attn.attend(self.norm2(x), *mem, causal=False))
        return x + self.drop(self.mlp(self.norm3(x)))


class DecoderLayer(_Sublayers):
    """Pre-norm decoder layer: causal self-attention, cross-attention to the image, GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__(dim, heads, mlp_ratio, dropout)
        self.norm1 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        """All positions at once (teacher forcing)."""
        h = self.norm1(x)
        return self.stream(x, h, self.self_attn.keys_values(h), memory_kv, causal=True)

    def step(self, x: Tensor, t: int, cache: KVCache, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        """Position `t` only: ``x`` is ``(B, 1, D)``; attends to positions ``0..t`` via `cache`."""
        h = self.norm1(x)
        kv = cache.append(t, *self.self_attn.keys_values(h))
        return self.stream(x, h, kv, memory_kv, causal=False)


class TwoStreamLayer(_Sublayers):
    """PARSeq's two-stream layer (forward permutation): query stream t sees content 0..t."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__(dim, heads, mlp_ratio, dropout)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_c = nn.LayerNorm(dim)

    def forward(
        self,
        query: Tensor,
        content: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        update_content: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """All positions at once; returns (query, content), content unchanged when not updated."""
        hc = self.norm_c(content)
        kv = self.self_attn.keys_values(hc)
        query = self.stream(query, self.norm_q(query), kv, memory_kv, causal=True)
        if update_content:
            content = self.stream(content, hc, kv, memory_kv, causal=True)
        return query, content

    def step(
        self,
        query: Tensor,
        content: Tensor,
        t: int,
        cache: KVCache,
        memory_kv: tuple[Tensor, Tensor],
        update_content: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Position `t` only (``(B, 1, D)`` each), content K/V of ``0..t`` kept in `cache`."""
        hc = self.norm_c(content)
        kv = cache.append(t, *self.self_attn.keys_values(hc))
        query = self.stream(query, self.norm_q(query), kv, memory_kv, causal=False)
        if update_content:
            content = self.stream(content, hc, kv, memory_kv, causal=False)
        return query, content
