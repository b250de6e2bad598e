"""The official CLIP-OCR decoder layer (wzx99/CLIPOCR's `strhub`, DESIGN §6), with a K/V cache.

CLIP-OCR uses PARSeq's two-stream `DecoderLayer` in one way only:

* the **query stream** starts from the position queries and, per layer, self-attends over the
  **content stream** (pre-norms ``norm_q`` on the queries, ``norm_c`` on the content), then
  cross-attends to the final encoder tokens (pre-norm ``norm1``) and runs a GELU MLP (pre-norm
  ``norm2``): 4 LayerNorms per layer;
* the content stream (BOS's embedding with no position, then ``c_i``'s embedding · √dim +
  position query ``i − 1``) is **never updated**: the official code comments the update out, so
  every layer reads the same content embeddings through its own ``norm_c``;
* the self-attention mask is causal (query ``t`` sees content ``0..t``) plus a key-padding mask
  over the PAD/EOS content positions.

The parameter names are PARSeq's (``self_attn.in_proj_weight``, ``out_proj``, ``linear1`` …), so
an official layer's state dict loads into this one key for key (tests/test_official_decoder.py
compares the outputs). Written out rather than `nn.MultiheadAttention` so that generation can
cache the content K/V of past positions and the image's K/V, and compute one position per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as tfn
from torch import Tensor, nn

from clipocr.train_student.decoder import KVCache, _merge_heads, _split_heads


class PackedAttention(nn.Module):
    """`nn.MultiheadAttention`'s parameters (one packed q/k/v projection, ``out_proj``) on
    `F.scaled_dot_product_attention`, with K/V exposed for caching."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dim, self.dropout = heads, dim, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's `nn.MultiheadAttention` init, which PARSeq's `init_weights` leaves alone
        for the packed projection (it is not an `nn.Linear`): xavier-uniform, zero bias."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        d = self.dim
        kv = tfn.linear(x, self.in_proj_weight[d:], self.in_proj_bias[d:])
        k, v = kv.chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """`mask`: boolean, True where a query may attend a key, broadcast to (B, H, Tq, Tk)."""
        d = self.dim
        q = _split_heads(tfn.linear(x, self.in_proj_weight[:d], self.in_proj_bias[:d]), self.heads)
        p = self.dropout if self.training else 0.0
        out = tfn.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out_proj(_merge_heads(out))


class OfficialLayer(nn.Module):
    """One layer of the official decoder: the query stream's update over a fixed content stream.

    Dropout sits where PARSeq puts it: on the attention weights, after each sublayer and inside
    the MLP (after the activation).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.self_attn = PackedAttention(dim, heads, dropout)
        self.cross_attn = PackedAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.norm1 = nn.LayerNorm(dim)  # before the cross-attention
        self.norm2 = nn.LayerNorm(dim)  # before the MLP
        self.norm_q = nn.LayerNorm(dim)  # the query stream, before the self-attention
        self.norm_c = nn.LayerNorm(dim)  # the content stream, as the self-attention's keys
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def _stream(
        self, query: Tensor, kv: tuple[Tensor, Tensor], memory_kv: tuple[Tensor, Tensor],
        mask: Tensor | None,
    ) -> Tensor:  # fmt: skip
        x = query + self.dropout1(self.self_attn.attend(self.norm_q(query), *kv, mask))
        x = x + self.dropout2(self.cross_attn.attend(self.norm1(x), *memory_kv))
        mlp = self.linear2(self.dropout(tfn.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout3(mlp)

    def forward(
        self,
        query: Tensor,
        content: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        mask: Tensor | None,
    ) -> Tensor:
        """All positions at once (teacher forcing); `mask` from `attention_mask`."""
        return self._stream(query, self.self_attn.keys_values(self.norm_c(content)), memory_kv,
                            mask)  # fmt: skip

    def step(
        self, query: Tensor, content: Tensor, t: int, cache: KVCache,
        memory_kv: tuple[Tensor, Tensor],
    ) -> Tensor:  # fmt: skip
        """Position `t` only (``(B, 1, D)`` each): the content K/V of ``0..t`` kept in `cache`.
        No padding mask, as the official inference: no position before EOS can see PAD/EOS."""
        kv = cache.append(t, *self.self_attn.keys_values(self.norm_c(content)))
        return self._stream(query, kv, memory_kv, None)


def attention_mask(tgt_in: Tensor, pad_id: int, eos_id: int) -> Tensor:
    """Query ``t`` may attend content ``0..t`` except PAD/EOS positions: ``(B, 1, T, T)`` bool.

    Row ``t`` always keeps position 0 (BOS), so no row is empty (an empty row would be NaN)."""
    t = tgt_in.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()
    keep = (tgt_in != pad_id) & (tgt_in != eos_id)
    return causal & keep[:, None, None, :]


def content_positions(pos_queries: Tensor) -> Tensor:
    """The position added to content position ``p``: nothing for ``p = 0`` (BOS, the null
    context), position query ``p − 1`` after it — ``(1, L + 2, D)``, row 0 zero."""
    return tfn.pad(pos_queries, (0, 0, 1, 0))
