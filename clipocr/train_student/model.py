"""The student recognizer: a timm ViT encoder and a small causal transformer decoder (DESIGN §6).

The model exposes the *stage features* the distillation losses pull towards the teacher: the
encoder's residual stream after blocks depth/4, 2·depth/4 and 3·depth/4 (the same split as the
CLIP teacher's cached stages), the final class token (for GAM), and every decoder layer's output
passed through the decoder's final LayerNorm (as the official code does).

Decoding convention (shared with the trainer and evaluator): decoder position ``t`` receives the
token at ``tgt_in[t]`` (``BOS, c1 … cL, PAD …``) plus a learned position query and predicts
``tgt_out[t]`` (``c1 … cL, EOS, PAD …``). So positions ``0..L`` correspond one to one with CLIP's
character-level text tokens ``c1 … cL, EOT`` — no alignment matrix is needed on the text side.

Only the student is saved for inference (`checkpoint.py`); the heads live in `heads.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as tfn
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from clipocr.pipeline.charset import MAX_LABEL_LEN, Charset

NUM_STAGES = 4  # both towers are split into 4 stages; stages 1–3 are tapped, the 4th is the output


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of a student. Defaults are the paper's ViT-Small student (≈ 31 M params)."""

    charset: str = "36"
    max_len: int = MAX_LABEL_LEN
    img_size: tuple[int, int] = (32, 128)
    patch_size: tuple[int, int] = (4, 8)
    enc_dim: int = 384
    enc_depth: int = 12
    enc_heads: int = 6
    mlp_ratio: float = 4.0
    dec_depth: int = 4
    dec_heads: int = 12
    dec_mlp_ratio: float = 4.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so configs compare equal.
        object.__setattr__(self, "img_size", tuple(int(v) for v in self.img_size))
        object.__setattr__(self, "patch_size", tuple(int(v) for v in self.patch_size))
        Charset.from_name(self.charset, self.max_len)  # raises on an unknown charset
        problems = []
        if len(self.img_size) != 2 or len(self.patch_size) != 2:
            problems.append("img_size and patch_size must be (H, W) pairs")
        elif any(i % p for i, p in zip(self.img_size, self.patch_size, strict=True)):
            problems.append(f"img_size {self.img_size} is not a multiple of {self.patch_size}")
        if self.enc_depth < NUM_STAGES or self.enc_depth % NUM_STAGES:
            problems.append(f"enc_depth {self.enc_depth} must be a positive multiple of 4")
        if self.enc_dim % self.enc_heads or self.enc_dim % self.dec_heads:
            problems.append(f"enc_dim {self.enc_dim} must be divisible by enc_heads and dec_heads")
        if self.dec_depth < 1 or self.max_len < 1:
            problems.append("dec_depth and max_len must be ≥ 1")
        if problems:
            raise ValueError("invalid StudentConfig: " + "; ".join(problems))

    @property
    def num_patches(self) -> int:
        return (self.img_size[0] // self.patch_size[0]) * (self.img_size[1] // self.patch_size[1])

    @property
    def num_tokens(self) -> int:
        """Encoder tokens per image: the class token plus the patches (129 for the paper)."""
        return 1 + self.num_patches

    @property
    def enc_taps(self) -> tuple[int, int, int]:
        """1-based encoder block counts after which stages 1–3 are read."""
        step = self.enc_depth // NUM_STAGES
        return step, 2 * step, 3 * step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        """Inverse of `to_dict`; rejects unknown keys so a foreign config is not half-read."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown StudentConfig keys {sorted(unknown)}")
        return cls(**data)


PRESETS: dict[str, StudentConfig] = {
    # Tiny dims for tests: stage taps after blocks 1/2/3, 4 decoder layers like the paper.
    "test": StudentConfig(
        enc_dim=32,
        enc_depth=4,
        enc_heads=2,
        dec_depth=4,
        dec_heads=2,
        mlp_ratio=2.0,
        dec_mlp_ratio=2.0,
    ),
    # PARSeq-Ti sizes: decoder head dim 32 as in the small model.
    "tiny": StudentConfig(enc_dim=192, enc_heads=3, dec_heads=6),
    # The paper's student (ViT-S encoder).
    # A CPU-sized student for the offline demo: full-height 32×4 patches (32 tokens, read left to
    # right like CRNN columns) keep a training step affordable on two cores.
    "mini": StudentConfig(
        enc_dim=128,
        enc_depth=4,
        enc_heads=4,
        patch_size=(32, 4),
        mlp_ratio=2.0,
        dec_heads=4,
        dec_mlp_ratio=2.0,
    ),  # fmt: skip
    "small": StudentConfig(),
    # ViT-B encoder; decoder heads of 64 dims as in ViT-B.
    "base": StudentConfig(enc_dim=768, enc_heads=12, dec_heads=12),
}


def student_config(preset: str = "small", **overrides: Any) -> StudentConfig:
    """A preset with some fields replaced, e.g. ``student_config("small", charset="94")``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown student preset {preset!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[preset], **overrides)


@dataclass
class StudentOutput:
    """Everything one teacher-forced pass produces.

    logits: ``(B, T, C+1)``. enc_stages: 3 tensors ``(B, 1+N_patches, D)``, the residual stream
    after the tapped blocks, class token first. enc_cls: ``(B, D)``, class token of the final
    normed encoder output. dec_stages: ``dec_depth`` tensors ``(B, T, D)``, each decoder layer's
    output through the decoder's final LayerNorm (the last one feeds the classifier).
    """

    logits: Tensor
    enc_stages: list[Tensor]
    enc_cls: Tensor
    dec_stages: list[Tensor]


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class _Attention(nn.Module):
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


class _KVCache:
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


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal self-attention, cross-attention to the image, GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = _Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = _Attention(dim, heads, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        """All positions at once (teacher forcing)."""
        h = self.norm1(x)
        x = x + self.drop(self.self_attn.attend(h, *self.self_attn.keys_values(h), causal=True))
        return self._cross_and_mlp(x, memory_kv)

    def step(self, x: Tensor, t: int, cache: _KVCache, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        """Position `t` only: ``x`` is ``(B, 1, D)``; attends to positions ``0..t`` via `cache`."""
        h = self.norm1(x)
        k, v = cache.append(t, *self.self_attn.keys_values(h))
        a = self.self_attn.attend(h, k, v, causal=False)
        return self._cross_and_mlp(x + self.drop(a), memory_kv)

    def _cross_and_mlp(self, x: Tensor, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.drop(self.cross_attn.attend(self.norm2(x), *memory_kv, causal=False))
        return x + self.drop(self.mlp(self.norm3(x)))


class Student(nn.Module):
    """ViT encoder + causal transformer decoder + linear classifier over EOS and the charset."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.charset = Charset.from_name(cfg.charset, cfg.max_len)
        dim = cfg.enc_dim
        self.encoder = VisionTransformer(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=dim,
            depth=cfg.enc_depth,
            num_heads=cfg.enc_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=True,
            num_classes=0,
            global_pool="",
            class_token=True,
            drop_path_rate=0.0,
        )
        # Inputs: EOS, chars, BOS, PAD. Scaled by √dim as PARSeq's TokenEmbedding does, so token
        # identity dominates the small (std 0.02) position queries.
        self.tok_embed = nn.Embedding(self.charset.pad_id + 1, dim)
        self.pos_queries = nn.Parameter(torch.empty(1, cfg.max_len + 1, dim))
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.dec_layers = nn.ModuleList(
            DecoderLayer(dim, cfg.dec_heads, cfg.dec_mlp_ratio, cfg.dropout)
            for _ in range(cfg.dec_depth)
        )
        self.dec_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.charset.num_classes)
        self._init_decoder()

    def _init_decoder(self) -> None:
        """PARSeq's init for everything outside the encoder (timm initialises the ViT)."""
        for name, mod in self.named_modules():
            if name.startswith("encoder"):
                continue
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Embedding):
                nn.init.trunc_normal_(mod.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_queries, std=0.02)

    # encoder ---------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """Images ``(B, 3, H, W)`` normalised with mean = std = 0.5 → (3 stage taps, final normed
        tokens ``(B, 1+N, D)``). The blocks are iterated here because timm's `forward_features`
        returns only the last output."""
        enc = self.encoder
        x = enc.norm_pre(enc.patch_drop(enc._pos_embed(enc.patch_embed(images))))
        stages = []
        taps = self.cfg.enc_taps
        for i, block in enumerate(enc.blocks, start=1):
            x = block(x)
            if i in taps:
                stages.append(x)
        return stages, enc.norm(x)

    # decoder ---------------------------------------------------------------------------------
    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        t = tokens.shape[1]
        x = self.tok_embed(tokens) * math.sqrt(self.cfg.enc_dim)
        return self.embed_drop(x + self.pos_queries[:, start : start + t])

    def _memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [layer.cross_attn.keys_values(memory) for layer in self.dec_layers]

    def forward(self, images: Tensor, tgt_in: Tensor) -> StudentOutput:
        """Teacher-forced pass. `tgt_in` ``(B, T)``, T ≤ max_len + 1, from
        `Charset.batch_targets`; logits[:, t] predicts ``tgt_out[:, t]``."""
        if tgt_in.shape[1] > self.cfg.max_len + 1:
            raise ValueError(
                f"tgt_in has {tgt_in.shape[1]} positions, max is {self.cfg.max_len + 1}"
            )
        enc_stages, memory = self.encode(images)
        x = self._embed(tgt_in, 0)
        dec_stages = []
        for layer, mem_kv in zip(self.dec_layers, self._memory_kv(memory), strict=True):
            x = layer(x, mem_kv)
            dec_stages.append(self.dec_norm(x))
        return StudentOutput(
            logits=self.head(dec_stages[-1]),
            enc_stages=enc_stages,
            enc_cls=memory[:, 0],
            dec_stages=dec_stages,
        )

    @torch.inference_mode()
    def generate(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Greedy batched decoding with a K/V cache; call `.eval()` first (dropout otherwise).

        Returns ``ids`` ``(B, T)`` and ``probs`` ``(B, T)`` with ``T ≤ max_len + 1``: the argmax
        class per step and its softmax probability. Decoding stops as soon as every sample has
        emitted EOS. Positions after a sample's EOS hold ``EOS`` with probability 1.0, so
        ``probs.prod(1)`` is the PARSeq confidence (product up to and including EOS).
        Each step computes only the new position: self-attention K/V of earlier positions are
        cached per layer and the image's cross-attention K/V are computed once.
        """
        _, memory = self.encode(images)
        mem_kv = self._memory_kv(memory)
        b, steps = images.shape[0], self.cfg.max_len + 1
        caches = [_KVCache(steps) for _ in self.dec_layers]
        eos = self.charset.eos_id
        token = torch.full((b, 1), self.charset.bos_id, dtype=torch.long, device=images.device)
        ended = torch.zeros(b, dtype=torch.bool, device=images.device)
        ids, probs = [], []
        for t in range(steps):
            x = self._embed(token, t)
            for layer, cache, kv in zip(self.dec_layers, caches, mem_kv, strict=True):
                x = layer.step(x, t, cache, kv)
            p, idx = self.head(self.dec_norm(x[:, 0])).float().softmax(-1).max(-1)
            idx = idx.masked_fill(ended, eos)
            p = p.masked_fill(ended, 1.0)
            ids.append(idx)
            probs.append(p)
            ended |= idx == eos
            if bool(ended.all()):
                break
            token = idx[:, None]
        return torch.stack(ids, 1), torch.stack(probs, 1)

    def read(self, images: Tensor) -> list[tuple[str, float]]:
        """Text and confidence (product of per-step max probabilities, EOS included) per image."""
        ids, probs = self.generate(images)
        return [
            (self.charset.decode(row_ids), float(row_probs.prod()))
            for row_ids, row_probs in zip(ids.cpu(), probs.cpu(), strict=True)
        ]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def main() -> None:
    """Print the parameter count of every preset (``python -m clipocr.train_student.model``)."""
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            model = Student(cfg)
        enc = sum(p.numel() for p in model.encoder.parameters())
        total = model.num_params()
        rest = total - enc
        print(
            f"{name:5s} encoder {enc / 1e6:.3f} M, decoder+head {rest / 1e6:.3f} M, total {total:,}"
        )


if __name__ == "__main__":
    main()
