"""The student recognizer: a timm ViT encoder and a small transformer decoder (DESIGN §6).

The model exposes the *stage features* the distillation losses pull towards the teacher: the
encoder's residual stream after blocks depth/4, 2·depth/4 and 3·depth/4 (the same split as the
CLIP teacher's cached stages), the final class token (for GAM), and every decoder layer's output
passed through the decoder's final LayerNorm (as the official code does).

Decoding convention (shared with the trainer and evaluator): decoder position ``t`` reads the
tokens ``tgt_in[0..t]`` (``BOS, c1 … cL, PAD …``) and predicts ``tgt_out[t]`` (``c1 … cL, EOS,
PAD …``). So positions ``0..L`` correspond one to one with CLIP's character-level text tokens
``c1 … cL, EOT`` — no alignment matrix is needed on the text side.

Decoder layers (`StudentConfig.dec_layer`): ``official`` (the paper's, `official_decoder.py`: a
query stream of position queries over a fixed content stream) in the paper's presets;
``standard`` (one causal stream of token + position embeddings, `decoder.py`) in the CPU demo's,
whose student was trained with it; ``two_stream`` (PARSeq's with the content stream updated)
kept as an option (issue 13).

Only the student is saved for inference (`checkpoint.py`); the heads live in `heads.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as tfn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from clipocr.pipeline.charset import Charset
from clipocr.train_student.decoder import DecoderLayer, KVCache, TwoStreamLayer
from clipocr.train_student.official_decoder import (
    OfficialLayer,
    attention_mask,
    content_positions,
)
from clipocr.train_student.stem import ConvStem
from clipocr.train_student.student_config import (
    NUM_STAGES,
    PRESETS,
    StudentConfig,
    student_config,
)

# Re-exported: the configuration lived here before it got its own module.
__all__ = ["NUM_STAGES", "PRESETS", "Student", "StudentConfig", "StudentOutput", "student_config"]


@dataclass
class StudentOutput:
    """Everything one teacher-forced pass produces.

    logits: ``(B, T, C+1)``. enc_stages: 3 tensors ``(B, 1+N_patches, D)``, the residual stream
    after the tapped blocks, class token first. enc_cls: ``(B, D)``, class token of the final
    normed encoder output. dec_stages: ``dec_depth`` tensors ``(B, T, D)``, each decoder layer's
    output (the query stream's, for the official and two-stream layers) through the decoder's
    final LayerNorm (the last one feeds the classifier). ctc_logits: ``(B, W, C+1)`` over the
    token grid's columns (class 0 = EOS doubles as the CTC blank), or None without a CTC head.
    """

    logits: Tensor
    enc_stages: list[Tensor]
    enc_cls: Tensor
    dec_stages: list[Tensor]
    ctc_logits: Tensor | None = None


class Student(nn.Module):
    """ViT encoder + transformer decoder + linear classifier over EOS and the charset, with an
    optional CTC head on the encoder tokens."""

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
            embed_layer=ConvStem if cfg.stem == "conv" else PatchEmbed,
        )
        # Inputs: EOS, chars, BOS, PAD. Scaled by √dim as PARSeq's TokenEmbedding does, so token
        # identity dominates the small (std 0.02) position queries.
        self.tok_embed = nn.Embedding(self.charset.pad_id + 1, dim)
        self.pos_queries = nn.Parameter(torch.empty(1, cfg.max_len + 1, dim))
        self.embed_drop = nn.Dropout(cfg.dropout)
        layer = {"official": OfficialLayer, "two_stream": TwoStreamLayer}.get(
            cfg.dec_layer, DecoderLayer
        )
        self.dec_layers = nn.ModuleList(
            layer(dim, cfg.dec_heads, cfg.dec_mlp_ratio, cfg.dropout) for _ in range(cfg.dec_depth)
        )
        self.dec_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.charset.num_classes)
        # Reads each column of the token grid; blank = EOS's class, which CTC never emits.
        self.ctc_head = nn.Linear(dim, self.charset.num_classes) if cfg.ctc_weight > 0 else None
        # Index k of the character a column belongs to on the CTC head's greedy path (0 before
        # the first); unit-scale like the LayerNormed tokens it is added to.
        self.align_embed = nn.Embedding(cfg.max_len + 1, dim) if cfg.ctc_align else None
        self._init_decoder()

    @property
    def two_stream(self) -> bool:
        return self.cfg.dec_layer == "two_stream"

    @property
    def official(self) -> bool:
        return self.cfg.dec_layer == "official"

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
        if self.align_embed is not None:
            nn.init.normal_(self.align_embed.weight, std=1.0)

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

    def ctc_logits(self, memory: Tensor) -> Tensor:
        """Final encoder tokens ``(B, 1+N, D)`` → CTC logits ``(B, W, C+1)``, one frame per grid
        column (rows averaged: the text runs left to right)."""
        if self.ctc_head is None:
            raise ValueError("this student has no CTC head (ctc_weight is 0)")
        grid_h = self.cfg.img_size[0] // self.cfg.patch_size[0]
        patches = memory[:, 1:]
        cols = patches.unflatten(1, (grid_h, -1)).mean(1)
        return self.ctc_head(cols)

    # decoder ---------------------------------------------------------------------------------
    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        """Token embeddings of positions ``start…`` plus their positions: the same position
        query as the output they feed (standard, two-stream), or, for the official layer, the
        content stream's — none for BOS, position query ``p − 1`` at ``p`` ≥ 1."""
        t = tokens.shape[1]
        x = self.tok_embed(tokens) * math.sqrt(self.cfg.enc_dim)
        pos = content_positions(self.pos_queries) if self.official else self.pos_queries
        return self.embed_drop(x + pos[:, start : start + t])

    def _queries(self, batch: int, start: int, steps: int) -> Tensor:
        """The query stream's input (official, two-stream): position queries only."""
        q = self.pos_queries[:, start : start + steps].expand(batch, -1, -1)
        return self.embed_drop(q)

    def _memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        memory = self._aligned(memory)
        return [layer.cross_attn.keys_values(memory) for layer in self.dec_layers]

    def _aligned(self, memory: Tensor) -> Tensor:
        """With `ctc_align`: add to every patch token the embedding of the index of the
        character its column starts or follows on the CTC head's greedy path. Why: the decoder
        step t then finds "character t+1" by matching an index instead of learning to locate
        characters by content, which its cross-attention learns very slowly (issue 13). The
        index is a discrete function of the CTC head, so no gradient flows into it."""
        if self.align_embed is None:
            return memory
        with torch.no_grad():
            ids = self.ctc_logits(memory).argmax(-1)  # (B, W)
            blank = self.charset.eos_id
            prev = tfn.pad(ids[:, :-1], (1, 0), value=blank)
            starts = (ids != blank) & (ids != prev)
            index = starts.cumsum(1).clamp(max=self.cfg.max_len)
        grid_h = self.cfg.img_size[0] // self.cfg.patch_size[0]
        patches = memory[:, 1:] + self.align_embed(index.repeat(1, grid_h))  # row-major grid
        return torch.cat([memory[:, :1], patches], dim=1)

    def forward(self, images: Tensor, tgt_in: Tensor) -> StudentOutput:
        """Teacher-forced pass. `tgt_in` ``(B, T)``, T ≤ max_len + 1, from
        `Charset.batch_targets`; logits[:, t] predicts ``tgt_out[:, t]``."""
        if tgt_in.shape[1] > self.cfg.max_len + 1:
            raise ValueError(
                f"tgt_in has {tgt_in.shape[1]} positions, max is {self.cfg.max_len + 1}"
            )
        enc_stages, memory = self.encode(images)
        dec_stages = self.decode(memory, tgt_in)
        return StudentOutput(
            logits=self.head(dec_stages[-1]),
            enc_stages=enc_stages,
            enc_cls=memory[:, 0],
            dec_stages=dec_stages,
            ctc_logits=self.ctc_logits(memory) if self.ctc_head is not None else None,
        )

    def decode(self, memory: Tensor, tgt_in: Tensor) -> list[Tensor]:
        """Teacher-forced decoder stages (forward order) over the final encoder tokens."""
        content = self._embed(tgt_in, 0)
        standard = self.cfg.dec_layer == "standard"
        x = content if standard else self._queries(tgt_in.shape[0], 0, tgt_in.shape[1])
        pad, eos = self.charset.pad_id, self.charset.eos_id
        mask = attention_mask(tgt_in, pad, eos) if self.official else None
        stages = []
        last = len(self.dec_layers) - 1
        for i, (layer, mem_kv) in enumerate(
            zip(self.dec_layers, self._memory_kv(memory), strict=True)
        ):
            if self.official:
                x = layer(x, content, mem_kv, mask)
            elif self.two_stream:
                x, content = layer(x, content, mem_kv, update_content=i < last)
            else:
                x = layer(x, mem_kv)
            stages.append(self.dec_norm(x))
        return stages

    @torch.inference_mode()
    def decode_step(self, token: Tensor, t: int, caches: list, mem_kv: list) -> Tensor:
        """One greedy step at position `t`: the previous tokens ``(B, 1)`` → class
        probabilities ``(B, C)`` (float32), each layer's self-attention cache extended by one.

        Shared by `generate` and the exported graph (`export_graph.GreedyGraph`), so the two
        cannot drift apart in how each decoder layer kind is stepped."""
        content = self._embed(token, t)
        x = content if self.cfg.dec_layer == "standard" else self._queries(token.shape[0], t, 1)
        last = len(self.dec_layers) - 1
        for i, (layer, cache, kv) in enumerate(zip(self.dec_layers, caches, mem_kv, strict=True)):
            if self.official:
                x = layer.step(x, content, t, cache, kv)
            elif self.two_stream:
                x, content = layer.step(x, content, t, cache, kv, update_content=i < last)
            else:
                x = layer.step(x, t, cache, kv)
        return self.head(self.dec_norm(x[:, 0])).float().softmax(-1)

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
        caches = [KVCache(steps) for _ in self.dec_layers]
        eos = self.charset.eos_id
        token = torch.full((b, 1), self.charset.bos_id, dtype=torch.long, device=images.device)
        ended = torch.zeros(b, dtype=torch.bool, device=images.device)
        ids, probs = [], []
        for t in range(steps):
            p, idx = self.decode_step(token, t, caches, mem_kv).max(-1)
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

    @torch.inference_mode()
    def read_ctc(self, images: Tensor) -> list[tuple[str, float]]:
        """Greedy CTC reading of the encoder tokens (repeats merged, blanks dropped): a second
        opinion that shows whether the encoder reads, independent of the decoder. Confidence =
        product of the per-frame max probabilities."""
        _, memory = self.encode(images)
        p, idx = self.ctc_logits(memory).float().softmax(-1).max(-1)
        blank = self.charset.eos_id
        out = []
        for row, row_p in zip(idx.cpu().tolist(), p.cpu(), strict=True):
            kept = [c for j, c in enumerate(row) if c != blank and (j == 0 or c != row[j - 1])]
            out.append((self.charset.decode(kept), float(row_p.prod())))
        return out

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
