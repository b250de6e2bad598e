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


# Both terms below are autograd Functions only for speed: each returns the value autograd would
# give for the plain formula (written out in tests/test_losses.py) and its exact gradient, with
# fewer N × N passes. On a CPU the image stages' LCL (N = 32 × 33 = 1,056 rows each in the demo)
# is most of what a distilled step costs beyond a plain one.
class _GramL1(torch.autograd.Function):
    """``intra = mean |f fᵀ − F Fᵀ|`` for unit rows `f`, `F` ``(N, d)``.

    Forward: ``D = [f | F] [f | −F]ᵀ`` (one product instead of two and a subtraction).
    Backward: with S = sign(D), ``∂/∂f = (S + Sᵀ) f / N²`` and ``∂/∂F = −(S + Sᵀ) F / N²``;
    D is symmetric, so S + Sᵀ = 2S (the diagonal, where D is rounding noise around 0, is its own
    transpose), and both gradients come from one product ``2S [f | F]``, where autograd runs
    four products and an N × N chain (sign, mul, neg, add) between."""

    @staticmethod
    def forward(ctx, f: Tensor, F: Tensor) -> Tensor:
        diff = torch.cat([f, F], dim=1) @ torch.cat([f, -F], dim=1).T
        sign = diff.sign()
        ctx.save_for_backward(sign, f, F)
        return diff.abs_().mean()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        sign, f, F = ctx.saved_tensors
        both = sign @ torch.cat([f, F], dim=1)
        both.mul_(grad * 2 / sign.numel())
        d = f.shape[1]
        return both[:, :d], both[:, d:].neg_()


class _OwnRowNCE(torch.autograd.Function):
    """``inter = CE((f / τ) Cᵀ, arange(N))``: row i of `f` ``(N, d)`` should pick column i of
    `C` ``(M ≥ N, d)``.

    The same value as `cross_entropy` (the mean of the own columns' log-softmax), and its
    gradient ``(softmax − I) / N`` through the product from one pass over the saved
    log-softmax, where autograd's cross-entropy adds a zero-filled one-hot gradient and a
    log-softmax backward. τ divides the N × d rows, not the N × M logits."""

    @staticmethod
    def forward(ctx, f: Tensor, C: Tensor, tau: float) -> Tensor:
        log_p = torch.log_softmax((f / tau) @ C.T, dim=1)
        ctx.save_for_backward(f, C, log_p)
        ctx.tau = tau
        return -log_p.diagonal().mean()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        f, C, log_p = ctx.saved_tensors
        p = log_p.exp()  # softmax, row by row
        p.diagonal().sub_(1.0)
        p.mul_(grad / (f.shape[0] * ctx.tau))
        need_f, need_c, _ = ctx.needs_input_grad
        return (p @ C if need_f else None), (p.T @ f if need_c else None), None


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
    # float32 even inside an autocast region (bf16 on CUDA by default), which would otherwise
    # run these products in bf16 whatever dtype the rows have.
    with torch.autocast(f.device.type, enabled=False):
        f, F = _unit_rows(f), _unit_rows(F)
        intra = _GramL1.apply(f, F)
        columns = F if extra_negatives is None else torch.cat([F, _unit_rows(extra_negatives)])
        inter = _OwnRowNCE.apply(f, columns, tau)
    return lambda1 * intra + lambda2 * inter, intra, inter


def lcl_autograd(
    f: Tensor,
    F: Tensor,  # teacher rows
    lambda1: float = 5.0,
    lambda2: float = 0.1,
    tau: float = 0.03,
    extra_negatives: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`lcl` written as its formula, differentiated by autograd: the definition the fast `lcl`
    must equal (tests/test_losses.py), and the "before" that bench/bench_train.py times."""
    with torch.autocast(f.device.type, enabled=False):
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
