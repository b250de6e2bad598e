"""The student with greedy decoding as one traceable graph: what `clipocr export` writes.

`Student.generate` is written for PyTorch: a K/V cache filled in place and a Python ``break`` once
every sample has ended. Neither survives tracing (an exporter records one run's control flow), so
this module unrolls the same decoding for a *fixed* ``max_len + 1`` steps with the cache grown by
concatenation and an EOS mask instead of the break: after a sample's EOS its ids stay EOS with
probability 1.0, exactly the padding `generate` returns, so ``probs.prod(1)`` is the same
confidence and the strings are the same.

Why one graph of fixed length rather than an encoder graph plus a decoder-step graph with its
cache as inputs and outputs: the file is then the whole recognizer — one ``run`` from any
ONNX Runtime binding (C, C#, Java, JavaScript, mobile), no decoding loop, cache layout or
BOS/EOS rule to re-implement and get wrong outside Python. The price is the steps after the last
EOS, which `generate` skips; for this decoder (one new position per step, a few small matrices)
that is measured in BENCHMARKS.md rather than assumed.

Input: uint8 pixels ``(B, 3, 32, 128)``, RGB, already resized (the normalisation is inside the
graph, so a caller cannot get mean/std wrong). Output: ``ids`` int64 ``(B, max_len + 1)`` and
``probs`` float32 ``(B, max_len + 1)``. The batch dimension is dynamic.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clipocr.train_student.model import Student

INPUT_NAME = "images"
OUTPUT_NAMES = ("ids", "probs")


class GrowingCache:
    """`decoder.KVCache`'s interface with the K/V of positions ``0..t`` grown by concatenation:
    the in-place writes into a preallocated buffer that `KVCache` does are not exported cleanly,
    a concatenation is one op every exporter knows. Each layer's own ``step`` runs unchanged."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, t: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        return self.k, self.v


class GreedyGraph(nn.Module):
    """`Student.generate` unrolled to ``max_len + 1`` steps; ``forward(uint8 images) -> (ids,
    probs)``. Wraps (does not copy) a student in eval mode."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student.eval()
        self.steps = student.cfg.max_len + 1

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        s = self.student
        x = images.float() / 255.0
        x = (x - 0.5) / 0.5  # `pipeline.preprocess.normalize` with the student's mean = std = 0.5
        _, memory = s.encode(x)
        mem_kv = s._memory_kv(memory)
        eos = s.charset.eos_id
        # (B, 1) of BOS, built from the input so the batch size stays symbolic in the trace.
        token = torch.zeros_like(images[:, 0, 0, :1], dtype=torch.long) + s.charset.bos_id
        ended = torch.zeros_like(token[:, 0], dtype=torch.bool)
        caches = [GrowingCache() for _ in s.dec_layers]
        ids, probs = [], []
        for t in range(self.steps):  # `Student.generate`'s step, without its early stop
            p, idx = s.decode_step(token, t, caches, mem_kv).max(-1)
            idx = torch.where(ended, torch.full_like(idx, eos), idx)
            p = torch.where(ended, torch.ones_like(p), p)
            ids.append(idx)
            probs.append(p)
            ended = ended | (idx == eos)
            token = idx[:, None]
        return torch.stack(ids, 1), torch.stack(probs, 1)
