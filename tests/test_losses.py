"""The fast LCL (fused autograd Functions) against its formula differentiated by autograd: equal
values and gradients, with and without extra negatives, at the demo's row count too, and float32
inside an autocast region. (The formula itself is checked against loops in test_heads.py and
against the official code's reference in test_reference.py.)"""

from __future__ import annotations

import pytest
import torch

from clipocr.train_student import losses


def _rows(n: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) * scale).requires_grad_()


def _value_and_grads(fn, f, F, extra, **kw) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    f, F = f.detach().clone().requires_grad_(), F.detach().clone().requires_grad_()
    out = fn(f, F, extra_negatives=extra, **kw)
    # weights on all three outputs, so each one's gradient path is exercised
    (out[0] + 0.3 * out[1] + 0.7 * out[2]).backward()
    return [o.detach() for o in out], [f.grad, F.grad]


@pytest.mark.parametrize(
    ("n", "d", "m"), [(1, 4, 0), (7, 12, 0), (13, 5, 50), (64, 32, 9), (1056, 128, 0)]
)
def test_fast_lcl_equals_the_formula_and_its_autograd_gradient(n: int, d: int, m: int) -> None:
    f, F = _rows(n, d, seed=n, scale=3.0), _rows(n, d, seed=n + 1)
    extra = _rows(m, d, seed=n + 2).detach() if m else None
    kw = {"lambda1": 2.0, "lambda2": 0.5, "tau": 0.07}
    got_v, got_g = _value_and_grads(losses.lcl, f, F, extra, **kw)
    want_v, want_g = _value_and_grads(losses.lcl_autograd, f, F, extra, **kw)
    for got, want, name in zip(got_v, want_v, ("total", "intra", "inter"), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=name)
    for got, want, name in zip(got_g, want_g, ("grad f", "grad F"), strict=True):
        # relative to the gradient's own size: entries are ~1/N² of the loss at N = 1,056
        scale = float(want.abs().max())
        torch.testing.assert_close(got / scale, want / scale, rtol=0, atol=1e-5, msg=name)


def test_fast_lcl_leaves_rows_without_grad_alone() -> None:
    f, F = _rows(9, 6, seed=0), _rows(9, 6, seed=1).detach()
    losses.lcl(f, F)[0].backward()
    assert f.grad is not None and F.grad is None


def test_lcl_runs_in_float32_inside_autocast() -> None:
    """Under bf16 autocast the products would otherwise run in bf16 (τ = 0.03 amplifies its
    rounding ~33×): the value must be the float32 one."""
    f, F = _rows(40, 16, seed=3).detach(), _rows(40, 16, seed=4).detach()
    want = losses.lcl(f, F)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = losses.lcl(f, F)
        plain = losses.lcl_autograd(f, F)
    for g, p, w in zip(got, plain, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(p, w, rtol=1e-6, atol=1e-6)
