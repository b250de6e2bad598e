"""Distillation losses: LCL (the paper's Linguistic Consistency Loss) and a plain-L1 ablation.

LCL compares two *sets* of N rows (student f, teacher F), all tokens of the whole batch flattened
together (DESIGN §6), after L2-normalising every row:

- ``intra = mean |f fᵀ − F Fᵀ|``: the student's token-to-token similarity structure should match
  the teacher's (N × N Gram matrices);
- ``inter = CE(f Fᵀ / τ, arange(N))``: each student row should pick out its own teacher row among
  all teacher rows (InfoNCE); under DDP the teacher rows of the other ranks join as extra
  negatives, as the official code does;
- ``LCL = λ1·intra + λ2·inter`` (λ1 = 5, λ2 = 0.1, τ = 0.03).

Computed in float32 whatever the autocast dtype: cosine Gram matrices divided by τ = 0.03 amplify
bf16 rounding ~33×.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as tfn
from torch import Tensor

LOSS_TYPES = ("lcl", "l1")
_EPS = 1e-7  # as the official code: x / (‖x‖ + 1e-7)


def _unit_rows(x: Tensor) -> Tensor:
    x = x.float()
    return x / (x.norm(dim=-1, keepdim=True) + _EPS)


def lcl(
    f: Tensor,
    F: Tensor,  # teacher rows, in the paper's notation
    lambda1: float = 5.0,
    lambda2: float = 0.1,
    tau: float = 0.03,
    extra_negatives: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """LCL between student rows `f` ``(N, d)`` and teacher rows `F` ``(N, d)`` → (total, intra,
    inter). `extra_negatives` ``(M, d)`` are further teacher rows (other ranks' batches) that
    only widen the contrastive softmax; they take no part in `intra`."""
    if f.ndim != 2 or f.shape != F.shape:
        raise ValueError(f"lcl needs two (N, d) tensors of one shape, got {f.shape} and {F.shape}")
    f, F = _unit_rows(f), _unit_rows(F)
    intra = (f @ f.T - F @ F.T).abs().mean()
    columns = F if extra_negatives is None else torch.cat([F, _unit_rows(extra_negatives)])
    target = torch.arange(f.shape[0], device=f.device)
    inter = tfn.cross_entropy(f @ columns.T / tau, target)
    return lambda1 * intra + lambda2 * inter, intra, inter


def l1(s: Tensor, t: Tensor) -> Tensor:
    """Plain L1 between (LayerNormed) student and teacher rows: the "L1 vs LCL" ablation."""
    if s.shape != t.shape:
        raise ValueError(f"l1 needs tensors of one shape, got {s.shape} and {t.shape}")
    return tfn.l1_loss(s.float(), t.float())


def gather_other_ranks(rows: Tensor) -> Tensor | None:
    """The `rows` ``(n_r, d)`` of every *other* DDP rank, concatenated; None outside DDP.

    Row counts differ between ranks (text rows depend on word lengths), so sizes are exchanged
    first and each rank pads to the largest. The result carries no gradient: other ranks' teacher
    rows are constants here, as in CLIP-style contrastive training. Every rank must call this the
    same number of times in the same order (collective operation).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    rows = rows.detach().contiguous()
    world, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = rows.new_zeros((max(sizes), rows.shape[1]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    others = [g[:n] for r, (g, n) in enumerate(zip(gathered, sizes, strict=True)) if r != rank]
    return torch.cat(others)
