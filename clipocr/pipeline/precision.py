"""Mixed precision, resolved one way for every job (teacher caching, training)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """`auto` = bf16 autocast on CUDA and plain fp32 on CPU (where bf16 matmuls are slow)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
