"""Distillation heads and losses: each formula against a direct re-implementation, masking,
stage pairing, gradients, and DDP negatives."""

from __future__ import annotations

import math
import socket
import subprocess
import sys

import pytest
import torch

from clipocr.train_student import losses
from clipocr.train_student.heads import GAM, AAMImage, AAMText, DistillConfig, DistillHeads
from clipocr.train_student.model import Student, student_config

LABELS = ["abc", "hello", "x", "0a9z"]
DIMS = {"image_tokens": 5, "image": 24, "text": 20, "emb": 16}


# direct re-implementations (float64, loops) ------------------------------------------------------
def unit(v: torch.Tensor) -> torch.Tensor:
    return v / (math.sqrt(sum(float(x) ** 2 for x in v)) + 1e-7)


def lcl_reference(f, F, lambda1, lambda2, tau, extra=None) -> tuple[float, float, float]:
    f = [unit(r.double()) for r in f]
    F = [unit(r.double()) for r in F]
    cols = F + ([unit(r.double()) for r in extra] if extra is not None else [])
    n = len(f)
    intra = sum(abs(float(f[i] @ f[j]) - float(F[i] @ F[j])) for i in range(n) for j in range(n))
    intra /= n * n
    inter = 0.0
    for i in range(n):
        logits = [float(f[i] @ c) / tau for c in cols]
        inter += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    inter /= n
    return lambda1 * intra + lambda2 * inter, intra, inter


def layer_norm_reference(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight.double() + ln.bias.double()


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 result vs float64 reference."""
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-5)


def randomise(module: torch.nn.Module) -> None:
    """Move every parameter off its init, so LN affine, biases and P all matter in the checks."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))


# LCL / L1 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_extra", [False, True])
def test_lcl_matches_reference(with_extra: bool) -> None:
    g = torch.Generator().manual_seed(0)
    f, F = torch.randn(7, 12, generator=g) * 3, torch.randn(7, 12, generator=g)
    extra = torch.randn(5, 12, generator=g) if with_extra else None
    got = losses.lcl(f, F, lambda1=2.0, lambda2=0.5, tau=0.1, extra_negatives=extra)
    want = lcl_reference(f, F, 2.0, 0.5, 0.1, extra)
    for g_, w in zip(got, want, strict=True):
        assert float(g_) == pytest.approx(w, rel=1e-5, abs=1e-6)


def test_lcl_defaults_and_properties() -> None:
    g = torch.Generator().manual_seed(1)
    f, F = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    total, intra, inter = losses.lcl(f, F)
    assert float(total) == pytest.approx(5.0 * float(intra) + 0.1 * float(inter), rel=1e-6)
    # rows are L2-normalised first: scaling rows changes nothing
    scaled = losses.lcl(f * torch.rand(6, 1, generator=g).add(0.5), F * 7.0)
    torch.testing.assert_close(scaled[0], total)
    # identical sets: no structural difference, and extra negatives make retrieval harder
    same = losses.lcl(F, F)
    assert float(same[1]) == pytest.approx(0.0, abs=1e-6)
    harder = losses.lcl(F, F, extra_negatives=torch.randn(20, 8, generator=g))
    assert float(harder[2]) > float(same[2])
    with pytest.raises(ValueError, match="one shape"):
        losses.lcl(f, F[:5])


def test_lcl_is_float32_under_half_inputs() -> None:
    g = torch.Generator().manual_seed(2)
    f, F = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    total = losses.lcl(f.bfloat16(), F.bfloat16())[0]
    assert total.dtype == torch.float32
    ref = losses.lcl(f.bfloat16().float(), F.bfloat16().float())[0]
    torch.testing.assert_close(total, ref)


def test_l1_matches_reference() -> None:
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    want = sum(abs(float(a) - float(b)) for a, b in zip(s.flatten(), t.flatten(), strict=True))
    assert float(losses.l1(s, t)) == pytest.approx(want / 20, rel=1e-6)


# heads --------------------------------------------------------------------------------------------
def test_aam_image_matches_reference() -> None:
    torch.manual_seed(0)
    head = AAMImage(d_student=6, d_teacher=4, n_student_tokens=9, n_teacher_tokens=3)
    assert torch.allclose(head.P, torch.full((3, 9), 1 / 9))  # token averaging at init
    randomise(head)
    f, F = torch.randn(2, 9, 6), torch.randn(2, 3, 4)
    s, t = head(f, F)
    assert s.shape == t.shape == (2 * 3, 4)
    for b in range(2):
        for k in range(3):
            pooled = sum(head.P[k, j].double() * f[b, j].double() for j in range(9))
            proj = head.W1.weight.double() @ pooled + head.W1.bias.double()
            close(s[b * 3 + k], layer_norm_reference(proj, head.ln_s))
            ref_t = layer_norm_reference(F[b, k], head.ln_t)
            close(t[b * 3 + k], ref_t)
    with pytest.raises(ValueError, match="tokens"):
        head(torch.randn(2, 8, 6), F)


def test_aam_text_keeps_only_valid_rows_in_batch_order() -> None:
    torch.manual_seed(0)
    head = AAMText(d_student=6, d_teacher=4)
    randomise(head)
    f, F = torch.randn(3, 5, 6), torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    s, t = head(f, F, mask)
    rows = [(b, i) for b in range(3) for i in range(5) if mask[b, i]]
    assert s.shape == t.shape == (len(rows), 4)
    for n, (b, i) in enumerate(rows):
        proj = head.W1.weight.double() @ f[b, i].double() + head.W1.bias.double()
        close(s[n], layer_norm_reference(proj, head.ln_s))
        close(t[n], layer_norm_reference(F[b, i], head.ln_t))
    with pytest.raises(ValueError, match="share"):
        head(f, F[:, :4], mask)


def test_gam_matches_reference() -> None:
    torch.manual_seed(0)
    gam = GAM(d_student=6, d_emb=4)
    randomise(gam)
    x = torch.randn(3, 6)
    lin1, ln, _, lin2 = gam.mlp
    got = gam(x)
    assert got.shape == (3, 4)
    for row in range(3):
        h = lin1.weight.double() @ x[row].double() + lin1.bias.double()
        h = torch.relu(layer_norm_reference(h, ln))
        close(got[row], lin2.weight.double() @ h + lin2.bias.double())


def test_linear_layers_start_as_the_official_code_starts_them() -> None:
    """PARSeq's init_weights on every head Linear (trunc-normal std 0.02, zero bias), as the
    official code applies it; PyTorch's default would give std ≈ 0.03 and biases up to ±0.05."""
    torch.manual_seed(0)
    vit_b = {"image_tokens": 17, "image": 768, "text": 512, "emb": 512}
    heads = DistillHeads(student_config("small"), vit_b)
    linears = [(n, m) for n, m in heads.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 + 3 + 2
    for name, lin in linears:
        weight = lin.weight.detach()
        assert torch.count_nonzero(lin.bias) == 0, name
        assert float(weight.std()) == pytest.approx(0.02, rel=0.05), name
        assert float(weight.abs().max()) <= 2.0, name  # trunc_normal's (absolute) bounds
    for name, ln in heads.named_modules():
        if isinstance(ln, torch.nn.LayerNorm):
            assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0), name
    for head in heads.image:
        assert torch.all(head.P == 1 / 129)  # P keeps its token-averaging init


# DistillHeads -------------------------------------------------------------------------------------
def make_batch(seed: int = 0) -> tuple[Student, torch.Tensor, torch.Tensor, dict]:
    torch.manual_seed(seed)
    student = Student(student_config("test", dropout=0.0))
    tgt_in, _ = student.charset.batch_targets(LABELS)
    b, t = tgt_in.shape
    mask = torch.zeros(b, t, dtype=torch.bool)
    for row, label in enumerate(LABELS):
        mask[row, : len(label) + 1] = True
    targets = {
        f"image_s{i}": torch.randn(b, DIMS["image_tokens"], DIMS["image"]) for i in (1, 2, 3)
    }
    targets |= {f"text_s{i}": torch.randn(b, t, DIMS["text"]) for i in (1, 2, 3)}
    targets |= {"text_mask": mask, "text_emb": torch.randn(b, DIMS["emb"])}
    return student, torch.randn(b, 3, 32, 128), tgt_in, targets


def test_terms_and_stage_pairing() -> None:
    student, images, tgt_in, targets = make_batch()
    heads = DistillHeads(student.cfg, DIMS)
    randomise(heads)
    out = student(images, tgt_in)
    terms = heads(out, targets)
    names = ["aam_img1", "aam_img2", "aam_img3", "aam_txt1", "aam_txt2", "aam_txt3", "gam"]
    assert list(terms) == names
    # each term is LCL of its head's rows: encoder stage i ↔ image stage i, decoder stage i ↔
    # text stage 4 − i, GAM on the final class token
    mask = targets["text_mask"]
    for i in (1, 2, 3):
        s, t = heads.image[i - 1](out.enc_stages[i - 1], targets[f"image_s{i}"])
        torch.testing.assert_close(terms[f"aam_img{i}"], losses.lcl(s, t)[0])
        s, t = heads.text[i - 1](out.dec_stages[i - 1], targets[f"text_s{4 - i}"], mask)
        assert s.shape[0] == sum(len(w) + 1 for w in LABELS)
        torch.testing.assert_close(terms[f"aam_txt{i}"], losses.lcl(s, t)[0])
    torch.testing.assert_close(
        terms["gam"], losses.lcl(heads.gam(out.enc_cls), targets["text_emb"])[0]
    )
    # perturbing text stage 3 moves the first decoder term only
    targets2 = dict(targets, text_s3=targets["text_s3"] + torch.randn_like(targets["text_s3"]))
    terms2 = heads(out, targets2)
    assert not torch.allclose(terms2["aam_txt1"], terms["aam_txt1"])
    for name in names:
        if name != "aam_txt1":
            torch.testing.assert_close(terms2[name], terms[name])


def test_padding_influences_nothing() -> None:
    """Padded teacher rows and padded decoder positions (PAD inputs) change no loss term."""
    student, images, tgt_in, targets = make_batch()
    heads = DistillHeads(student.cfg, DIMS)
    randomise(heads)
    base = heads(student(images, tgt_in), targets)
    mask = targets["text_mask"]
    noisy = dict(targets)
    for i in (1, 2, 3):
        noise = torch.randn_like(targets[f"text_s{i}"]) * 10
        noisy[f"text_s{i}"] = torch.where(mask[..., None], targets[f"text_s{i}"], noise)
    tgt_noisy = tgt_in.clone()
    pad = tgt_in == student.charset.pad_id
    assert pad.any()
    tgt_noisy[pad] = torch.randint(1, 30, (int(pad.sum()),))
    out = student(images, tgt_noisy)
    assert not torch.allclose(out.dec_stages[0][pad], student(images, tgt_in).dec_stages[0][pad])
    again = heads(out, noisy)
    for name, value in base.items():
        torch.testing.assert_close(again[name], value)


def test_gradients_reach_heads_and_student() -> None:
    student, images, tgt_in, targets = make_batch()
    heads = DistillHeads(student.cfg, DIMS)
    sum(heads(student(images, tgt_in), targets).values()).backward()
    params = dict(heads.named_parameters())
    for name in ("image.0.P", "image.2.W1.weight", "image.1.ln_s.weight", "image.0.ln_t.weight",
                 "image.0.ln_t.bias", "text.0.W1.weight", "text.2.ln_s.bias", "text.1.ln_t.weight",
                 "gam.mlp.0.weight", "gam.mlp.3.weight"):  # fmt: skip
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    student_params = dict(student.named_parameters())
    # by prefix: the decoder layer's own parameter names depend on its implementation
    for prefix in ("encoder.blocks.0.attn.", "encoder.blocks.3.mlp.fc1.weight",
                   "dec_layers.0.self_attn.", "tok_embed.weight"):  # fmt: skip
        found = [p for n, p in student_params.items() if n.startswith(prefix) and p.ndim > 1]
        assert found, prefix
        for p in found:
            assert p.grad is not None and p.grad.abs().sum() > 0, prefix
    # the head is not trained by distillation: only the recognition loss reaches it
    assert student_params["head.weight"].grad is None


def test_config_weights_flags_and_l1() -> None:
    student, images, tgt_in, targets = make_batch()
    out = student(images, tgt_in)
    torch.manual_seed(1)
    plain = DistillHeads(student.cfg, DIMS)
    torch.manual_seed(1)
    weighted = DistillHeads(student.cfg, DIMS, DistillConfig(w_image=2.0, w_text=0.5, w_gam=3.0))
    a, b = plain(out, targets), weighted(out, targets)
    for name, w in (("aam_img2", 2.0), ("aam_txt3", 0.5), ("gam", 3.0)):
        torch.testing.assert_close(b[name], w * a[name])

    torch.manual_seed(1)
    custom = DistillHeads(student.cfg, DIMS, DistillConfig(lambda1=1.0, lambda2=2.0, tau=0.5))
    s, t = custom.text[1](out.dec_stages[1], targets["text_s2"], targets["text_mask"])
    want = lcl_reference(s.detach(), t.detach(), 1.0, 2.0, 0.5)[0]
    assert float(custom(out, targets)["aam_txt2"].detach()) == pytest.approx(want, rel=1e-5)

    only_gam = DistillHeads(student.cfg, DIMS, DistillConfig(use_image=False, use_text=False))
    assert list(only_gam(out, {"text_emb": targets["text_emb"]})) == ["gam"]
    assert all(name.startswith("gam.") for name, _ in only_gam.named_parameters())

    l1_heads = DistillHeads(student.cfg, DIMS, DistillConfig(loss_type="l1"))
    s, t = l1_heads.image[0](out.enc_stages[0], targets["image_s1"])
    torch.testing.assert_close(l1_heads(out, targets)["aam_img1"], (s - t).abs().mean())

    with pytest.raises(ValueError, match="loss_type"):
        DistillConfig(loss_type="mse")
    with pytest.raises(ValueError, match="dec_depth"):
        DistillHeads(student_config("test", dec_depth=3), DIMS)
    with pytest.raises(ValueError, match="teacher_dims"):
        DistillHeads(student.cfg, {"image": 8})
    with pytest.raises(KeyError, match="text_mask"):
        plain(out, {k: v for k, v in targets.items() if k != "text_mask"})


# DDP negatives ------------------------------------------------------------------------------------
# Two real gloo ranks in subprocesses that import only `losses` (torch alone starts in seconds).
WORKER = """
import sys, torch, torch.distributed as dist
from clipocr.train_student import losses
rank, port = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
rows = torch.full((rank + 1, 3), float(rank))  # ranks hold different row counts
others = losses.gather_other_ranks(rows)
other = 1 - rank
assert torch.equal(others, torch.full((other + 1, 3), float(other))), others
dist.destroy_process_group()
print("ok", rank)
"""


def test_gather_other_ranks() -> None:
    assert losses.gather_other_ranks(torch.ones(2, 3)) is None  # not distributed
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(rank), port],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [o.strip().splitlines()[-1] for o in outputs] == ["ok 0", "ok 1"]


def test_heads_pass_other_ranks_rows_as_negatives(monkeypatch: pytest.MonkeyPatch) -> None:
    student, images, tgt_in, targets = make_batch()
    out = student(images, tgt_in)
    seen: list[torch.Tensor] = []

    def fake_gather(rows: torch.Tensor) -> torch.Tensor:
        seen.append(rows)
        return torch.randn(9, rows.shape[1], generator=torch.Generator().manual_seed(len(seen)))

    monkeypatch.setattr(losses, "gather_other_ranks", fake_gather)
    heads = DistillHeads(student.cfg, DIMS)
    terms = heads(out, targets)
    assert len(seen) == len(terms) == 7  # one collective per term, same order on every rank
    s, t = heads.image[0](out.enc_stages[0], targets["image_s1"])
    torch.testing.assert_close(seen[0], t)  # the teacher-side rows are what gets shared
    extra = torch.randn(9, t.shape[1], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(terms["aam_img1"], losses.lcl(s, t, extra_negatives=extra)[0])
    assert not torch.allclose(terms["aam_img1"], losses.lcl(s, t)[0])

    seen.clear()
    DistillHeads(student.cfg, DIMS, DistillConfig(ddp_negatives=False))(out, targets)
    assert seen == []
