"""The method as the paper and the official code (wzx99/CLIPOCR) define it, written out plainly and
compared with clipocr's heads and losses on random tensors (DESIGN §6).

Nothing here calls clipocr's loss code: the reference functions below restate the formulas with
plain tensor operations, in float32 as the official code computes them. Only the heads' weights
are shared (as the official modules' weights would be copied across), so a refactor of `heads.py`
or `losses.py` that changes the method fails here.

- rows L2-normalised as ``x / (‖x‖ + 1e-7)``; the tokens of the whole batch flattened into one set;
- ``intra = mean |f fᵀ − F Fᵀ|``, ``inter = CE(f Fᵀ / τ, arange(N))``,
  ``LCL = λ1·intra + λ2·inter`` with λ1 = 5, λ2 = 0.1, τ = 0.03;
- under DDP the other ranks' teacher rows are extra columns of ``f Fᵀ`` (negatives) only;
- AAM image: ``LN_s(W1 (P f))`` vs ``LN_t(F)``, P (17 × 129 for ViT-B/16 and the paper's
  student) initialised to 1/129; AAM text: ``LN_s(W1 f)`` vs ``LN_t(F)`` on the positions
  ``c1..cL, EOS`` ↔ ``c1..cL, EOT`` (past EOS masked: this project's recorded deviation),
  decoder stage i ↔ text stage 4 − i; GAM: ``Linear(ReLU(LN(Linear(f_cls))))`` vs ``F_emb``;
- every term has weight 1;
- the official code's pad alignment (clipocr's ``--text-pad align``): AAM text on *every*
  decoder position ``0..W−1`` of every sample (W = the batch's longest label + 1), the teacher's
  rows there being CLIP's text tower at those positions (pad-token features past EOT).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clipocr.train_student import losses
from clipocr.train_student.heads import DistillConfig, DistillHeads
from clipocr.train_student.model import student_config

LAMBDA1, LAMBDA2, TAU = 5.0, 0.1, 0.03


# the reference, written out -------------------------------------------------------------------
def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-7)


def lcl(f: torch.Tensor, F: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
    f, F = unit_rows(f.float()), unit_rows(F.float())
    intra = (f @ f.T - F @ F.T).abs().mean()
    columns = F if negatives is None else torch.cat([F, unit_rows(negatives.float())])
    logits = f @ columns.T / TAU
    log_p_own = logits.diagonal() - logits.logsumexp(dim=1)  # row i's own teacher row is column i
    inter = -log_p_own.mean()
    return LAMBDA1 * intra + LAMBDA2 * inter


def layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def linear(x: torch.Tensor, lin: torch.nn.Linear) -> torch.Tensor:
    return x @ lin.weight.T + lin.bias


def aam_image_rows(head, f: torch.Tensor, F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pooled = torch.einsum("kj,bjd->bkd", head.P, f)  # teacher token k = Σ_j P[k, j] f_j
    s = layer_norm(linear(pooled, head.W1), head.ln_s)
    return s.reshape(-1, s.shape[-1]), layer_norm(F, head.ln_t).reshape(-1, F.shape[-1])


def aam_text_rows(
    head, f: torch.Tensor, F: torch.Tensor, lengths: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions 0..L (c1..cL then EOS/EOT) of each sample, samples in batch order."""
    s = torch.cat([linear(f[b, : n + 1], head.W1) for b, n in enumerate(lengths)])
    t = torch.cat([F[b, : n + 1] for b, n in enumerate(lengths)])
    return layer_norm(s, head.ln_s), layer_norm(t, head.ln_t)


def aam_text_rows_aligned(
    head, f: torch.Tensor, F: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position 0..W−1 of every sample, samples in batch order (the official code)."""
    width = f.shape[1]
    s = torch.cat([linear(f[b], head.W1) for b in range(f.shape[0])])
    t = torch.cat([F[b, :width] for b in range(F.shape[0])])
    return layer_norm(s, head.ln_s), layer_norm(t, head.ln_t)


def gam(head, f_cls: torch.Tensor) -> torch.Tensor:
    first, ln, _, last = head.mlp  # Linear, LayerNorm, ReLU, Linear
    return linear(torch.relu(layer_norm(linear(f_cls, first), ln)), last)


def reference_terms(heads, out, targets, lengths, negatives) -> dict[str, torch.Tensor]:
    """Every term with weight 1; `negatives` yields one block of other ranks' rows per term."""
    terms = {}
    for i in (1, 2, 3):
        s, t = aam_image_rows(heads.image[i - 1], out.enc_stages[i - 1], targets[f"image_s{i}"])
        terms[f"aam_img{i}"] = lcl(s, t, next(negatives))
    step = len(out.dec_stages) // 4
    for i in (1, 2, 3):
        f = out.dec_stages[i * step - 1]  # decoder stage i (of 4) ↔ text stage 4 − i
        s, t = aam_text_rows(heads.text[i - 1], f, targets[f"text_s{4 - i}"], lengths)
        terms[f"aam_txt{i}"] = lcl(s, t, next(negatives))
    terms["gam"] = lcl(gam(heads.gam, out.enc_cls), targets["text_emb"], next(negatives))
    return terms


# random inputs of given shapes -------------------------------------------------------------------
def random_case(
    labels: list[str], dims: dict[str, int], dec_depth: int, seed: int
) -> tuple[DistillHeads, SimpleNamespace, dict, list[int]]:
    torch.manual_seed(seed)
    cfg = student_config("test", dec_depth=dec_depth)
    heads = DistillHeads(cfg, dims)
    with torch.no_grad():  # move every weight off its init, so each one matters
        for p in heads.parameters():
            p.add_(0.3 * torch.randn_like(p))
    b, width, d = len(labels), max(len(w) for w in labels) + 1, cfg.enc_dim
    out = SimpleNamespace(
        enc_stages=[torch.randn(b, cfg.num_tokens, d) for _ in range(3)],
        enc_cls=torch.randn(b, d),
        dec_stages=[torch.randn(b, width, d) for _ in range(dec_depth)],
    )
    lengths = [len(w) for w in labels]
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None] + 1
    targets = {f"image_s{i}": torch.randn(b, dims["image_tokens"], dims["image"]) * 3
               for i in (1, 2, 3)}  # fmt: skip
    # padded teacher rows hold noise: masking must keep them out
    targets |= {f"text_s{i}": torch.randn(b, width, dims["text"]) * 2 for i in (1, 2, 3)}
    targets |= {"text_mask": mask, "text_emb": torch.randn(b, dims["emb"])}
    return heads, out, targets, lengths


def _dims(tokens: int, image: int, text: int, emb: int) -> dict[str, int]:
    return {"image_tokens": tokens, "image": image, "text": text, "emb": emb}


CASES = [  # labels, teacher dims, decoder depth
    (["abc", "hello", "x", "0a9z"], _dims(17, 24, 20, 16), 4),
    (["a" * 25, "q", "stage", "tokens", "x1"], _dims(5, 12, 8, 8), 4),
    (["z"], _dims(3, 16, 16, 4), 4),
    (["word", "words", "wordy"], _dims(9, 8, 12, 6), 8),
]


@pytest.mark.parametrize(("labels", "dims", "dec_depth"), CASES)
@pytest.mark.parametrize("ddp_rows", [None, (1, 7, 30)])
def test_heads_and_lcl_match_the_reference(
    labels, dims, dec_depth, ddp_rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each term equals the reference to 1e-6, with and without other ranks' rows as negatives
    (one block per term, of varying sizes, as ranks hold different numbers of text rows)."""
    heads, out, targets, lengths = random_case(labels, dims, dec_depth, seed=len(labels))
    blocks = []
    if ddp_rows is not None:

        def other_ranks(rows: torch.Tensor) -> torch.Tensor:
            block = torch.randn(ddp_rows[len(blocks) % 3], rows.shape[1]) * 2
            blocks.append(block)
            return block

        monkeypatch.setattr(losses, "gather_other_ranks", other_ranks)
    got = heads(out, targets)
    negatives = iter(blocks) if ddp_rows is not None else iter(lambda: None, 0)
    want = reference_terms(heads, out, targets, lengths, negatives)
    assert list(got) == list(want)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6, msg=name)
    if ddp_rows is not None:
        assert len(blocks) == 7


def test_paper_constants_and_image_token_averaging() -> None:
    cfg = DistillConfig()
    assert (cfg.lambda1, cfg.lambda2, cfg.tau) == (LAMBDA1, LAMBDA2, TAU)
    assert (cfg.w_image, cfg.w_text, cfg.w_gam, cfg.loss_type) == (1.0, 1.0, 1.0, "lcl")
    vit_b16 = {"image_tokens": 17, "image": 768, "text": 512, "emb": 512}
    heads = DistillHeads(student_config("small"), vit_b16)
    for head in heads.image:
        assert head.P.shape == (17, 129) and torch.all(head.P == 1 / 129)
        assert head.W1.in_features == 384 and head.W1.out_features == 768
    assert [h.W1.out_features for h in heads.text] == [512] * 3
    assert [m.__class__.__name__ for m in heads.gam.mlp] == ["Linear", "LayerNorm", "ReLU",
                                                             "Linear"]  # fmt: skip


def test_lcl_reference_against_losses_directly() -> None:
    """The bare loss, on raw rows of several sizes, with and without extra negatives."""
    g = torch.Generator().manual_seed(0)
    for n, d, m in ((1, 4, 0), (6, 8, 3), (40, 16, 0), (13, 5, 50)):
        f, F = torch.randn(n, d, generator=g) * 4, torch.randn(n, d, generator=g)
        extra = torch.randn(m, d, generator=g) if m else None
        got = losses.lcl(f, F, extra_negatives=extra)[0]
        torch.testing.assert_close(got, lcl(f, F, extra), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("labels", "dims", "dec_depth"), CASES)
def test_text_pad_align_matches_the_official_alignment(labels, dims, dec_depth) -> None:
    """clipocr's align mode — the stream's collation of a ``--text-pad align`` store's rows,
    then the heads — equals the official code's every-position alignment to 1e-6."""
    from clipocr.pipeline.charset import Charset
    from clipocr.train_student.dataset import collate

    heads, out, _, _ = random_case(labels, dims, dec_depth, seed=len(labels) + 7)
    g = torch.Generator().manual_seed(1)
    positions = 26  # the text table keeps every position of the tower at context 27
    samples = []
    for label in labels:
        feats = {f"text_s{i}": torch.randn(positions, dims["text"], generator=g).numpy() * 2
                 for i in (1, 2, 3)}  # fmt: skip
        feats |= {f"image_s{i}": torch.randn(dims["image_tokens"], dims["image"]).numpy()
                  for i in (1, 2, 3)}  # fmt: skip
        feats["text_emb"] = torch.randn(dims["emb"]).numpy()
        samples.append({"label": label, "key": label, "image": torch.zeros(3, 32, 128),
                        "feats": feats})  # fmt: skip
    batch = collate(samples, Charset.from_name("36"), text_pad="align")
    width = batch["tgt_in"].shape[1]
    assert batch["text_mask"].all() and batch["text_s1"].shape[1] == width
    targets = {k: batch[k].float() if k != "text_mask" else batch[k] for k in
               ("image_s1", "image_s2", "image_s3", "text_s1", "text_s2", "text_s3", "text_emb",
                "text_mask")}  # fmt: skip
    got = heads(out, targets)
    step = len(out.dec_stages) // 4
    for i in (1, 2, 3):
        teacher = torch.stack([torch.from_numpy(s["feats"][f"text_s{4 - i}"]) for s in samples])
        teacher = teacher.half().float()  # as stored and collated (float16)
        s, t = aam_text_rows_aligned(heads.text[i - 1], out.dec_stages[i * step - 1], teacher)
        torch.testing.assert_close(got[f"aam_txt{i}"], lcl(s, t), rtol=1e-6, atol=1e-6)
    masked = heads(out, targets | {"text_mask": torch.arange(width)[None] < torch.tensor(
        [len(w) + 1 for w in labels])[:, None]})  # fmt: skip
    if len({len(w) for w in labels}) > 1:  # mixed lengths: the two modes differ
        assert not torch.isclose(masked["aam_txt1"], got["aam_txt1"])
