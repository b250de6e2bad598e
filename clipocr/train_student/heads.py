"""Distillation heads (AAM image/text, GAM) and the named loss terms they produce (DESIGN §6).

The heads exist only during training: they map student stage features into the teacher's spaces
and are dropped from the saved inference model.

- AAM image side (encoder stage i ↔ CLIP image stage i): ``LN_s(W1 · (P · f))`` vs ``LN_t(F)``,
  P a trainable (teacher tokens × student tokens) matrix initialised to token averaging.
- AAM text side (decoder stage i ↔ CLIP text stage 4−i): ``LN_s(W1 · f)`` vs ``LN_t(F)`` on the
  valid positions only (``c1..cL, EOS`` ↔ ``c1..cL, EOT``); positions past EOS are masked out, so
  padding influences nothing.
- GAM: ``Linear(ReLU(LN(Linear(f_cls))))`` vs CLIP's text embedding.

LN_t is trainable (it belongs to the head though it sits on the teacher side), which is why the
teacher cache stores features before any affine parameter. Linear layers start as the official code
starts them (PARSeq's `init_weights`: truncated normal, std 0.02, zero bias), not at PyTorch's
default (weight std ≈ 0.03 for width 384, bias up to ±0.05).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clipocr.train_student import losses
from clipocr.train_student.model import NUM_STAGES, StudentConfig, StudentOutput

TEACHER_DIM_KEYS = ("image_tokens", "image", "text", "emb")


def init_linear(module: nn.Module) -> None:
    """PARSeq's `init_weights` for a Linear layer (apply with `Module.apply`); others untouched."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class AAMImage(nn.Module):
    """Aligns one encoder stage with one CLIP image stage: ``LN_s(W1 (P f))`` and ``LN_t(F)``."""

    def __init__(
        self,
        d_student: int,
        d_teacher: int,
        n_student_tokens: int = 129,
        n_teacher_tokens: int = 17,
    ) -> None:
        super().__init__()
        # Token averaging at init: every teacher token starts as the mean of the student tokens.
        self.P = nn.Parameter(
            torch.full((n_teacher_tokens, n_student_tokens), 1 / n_student_tokens)
        )
        self.W1 = nn.Linear(d_student, d_teacher)
        self.ln_s = nn.LayerNorm(d_teacher)
        self.ln_t = nn.LayerNorm(d_teacher)
        self.apply(init_linear)

    def forward(self, f: Tensor, F: Tensor) -> tuple[Tensor, Tensor]:
        """`f` ``(B, N_s, d_s)``, `F` ``(B, N_t, d_t)`` → student, teacher rows ``(B·N_t, d_t)``."""
        if f.shape[1] != self.P.shape[1] or F.shape[1] != self.P.shape[0]:
            raise ValueError(
                f"AAM image head expects {self.P.shape[1]} student and {self.P.shape[0]} teacher "
                f"tokens, got {f.shape[1]} and {F.shape[1]}"
            )
        s = self.ln_s(self.W1(torch.matmul(self.P.to(f.dtype), f)))
        t = self.ln_t(F.to(self.ln_t.weight.dtype))
        return s.flatten(0, 1), t.flatten(0, 1)


class AAMText(nn.Module):
    """Aligns one decoder stage with one CLIP text stage on the valid positions only."""

    def __init__(self, d_student: int, d_teacher: int) -> None:
        super().__init__()
        self.W1 = nn.Linear(d_student, d_teacher)
        self.ln_s = nn.LayerNorm(d_teacher)
        self.ln_t = nn.LayerNorm(d_teacher)
        self.apply(init_linear)

    def forward(self, f: Tensor, F: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """`f` ``(B, T, d_s)``, `F` ``(B, T, d_t)``, `mask` ``(B, T)`` bool (True = valid) →
        student and teacher rows ``(N_valid, d_t)``, samples concatenated in batch order."""
        if f.shape[:2] != F.shape[:2] or tuple(mask.shape) != tuple(f.shape[:2]):
            raise ValueError(
                f"AAM text head needs decoder {tuple(f.shape[:2])}, teacher {tuple(F.shape[:2])} "
                f"and mask {tuple(mask.shape)} to share (B, T)"
            )
        mask = mask.bool()
        s = self.ln_s(self.W1(f[mask]))
        t = self.ln_t(F[mask].to(self.ln_t.weight.dtype))
        return s, t


class GAM(nn.Module):
    """Maps the encoder's final class token into CLIP's joint embedding space."""

    def __init__(self, d_student: int, d_emb: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d_student, d_student),
            nn.LayerNorm(d_student),
            nn.ReLU(),
            nn.Linear(d_student, d_emb),
        )
        self.apply(init_linear)

    def forward(self, f_cls: Tensor) -> Tensor:
        return self.mlp(f_cls)


@dataclass(frozen=True)
class DistillConfig:
    """Which terms to use, their loss and weights. Defaults: the paper (all weights 1, LCL).

    ``ddp_negatives``: under DDP, add the other ranks' teacher rows as LCL negatives.
    """

    lambda1: float = 5.0
    lambda2: float = 0.1
    tau: float = 0.03
    loss_type: str = "lcl"
    w_image: float = 1.0
    w_text: float = 1.0
    w_gam: float = 1.0
    use_image: bool = True
    use_text: bool = True
    use_gam: bool = True
    ddp_negatives: bool = True

    def __post_init__(self) -> None:
        if self.loss_type not in losses.LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} not in {losses.LOSS_TYPES}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")


class DistillHeads(nn.Module):
    """All heads of one student/teacher pair; `forward` returns the weighted loss terms.

    `teacher_dims`: ``image_tokens`` (17 for ViT-B/16 at 32×128 with the cropped pos-embedding),
    ``image`` (768), ``text`` (512), ``emb`` (512). Disabled terms build no head, so DDP sees no
    unused parameters.
    """

    def __init__(
        self,
        student_cfg: StudentConfig,
        teacher_dims: dict[str, int],
        cfg: DistillConfig | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DistillConfig()
        missing = [k for k in TEACHER_DIM_KEYS if k not in teacher_dims]
        if missing:
            raise ValueError(f"teacher_dims lacks {missing}")
        d = student_cfg.enc_dim
        self.image = self.text = self.gam = None
        if cfg.use_image:
            self.image = nn.ModuleList(
                AAMImage(
                    d, teacher_dims["image"], student_cfg.num_tokens, teacher_dims["image_tokens"]
                )
                for _ in range(NUM_STAGES - 1)
            )
        if cfg.use_text:
            if student_cfg.dec_depth % NUM_STAGES:
                raise ValueError(
                    f"text distillation needs dec_depth % 4 == 0, got {student_cfg.dec_depth}"
                )
            step = student_cfg.dec_depth // NUM_STAGES
            self.dec_taps = [i * step for i in range(1, NUM_STAGES)]  # 1-based decoder layers
            self.text = nn.ModuleList(
                AAMText(d, teacher_dims["text"]) for _ in range(NUM_STAGES - 1)
            )
        if cfg.use_gam:
            self.gam = GAM(d, teacher_dims["emb"])

    def _loss(self, s: Tensor, t: Tensor) -> Tensor:
        cfg = self.cfg
        if cfg.loss_type == "l1":
            return losses.l1(s, t)
        extra = losses.gather_other_ranks(t) if cfg.ddp_negatives else None
        return losses.lcl(s, t, cfg.lambda1, cfg.lambda2, cfg.tau, extra_negatives=extra)[0]

    def forward(self, out: StudentOutput, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named, weighted loss terms; their sum is the distillation loss.

        `targets` (batched teacher features): ``image_s1..3`` ``(B, N_t, D_img)``; ``text_s1..3``
        ``(B, T, D_txt)`` padded and aligned with the decoder positions (T = ``tgt_in`` width);
        ``text_mask`` ``(B, T)`` bool, True on the L_i + 1 valid rows; ``text_emb`` ``(B, E)``.
        Terms: ``aam_img{i}`` (encoder stage i ↔ image stage i), ``aam_txt{i}`` (decoder stage
        i ↔ text stage 4−i), ``gam``.
        """
        cfg = self.cfg
        terms: dict[str, Tensor] = {}
        if self.image is not None:
            for i, head in enumerate(self.image, start=1):
                s, t = head(out.enc_stages[i - 1], _target(targets, f"image_s{i}"))
                terms[f"aam_img{i}"] = cfg.w_image * self._loss(s, t)
        if self.text is not None:
            mask = _target(targets, "text_mask")
            for i, (head, tap) in enumerate(zip(self.text, self.dec_taps, strict=True), start=1):
                teacher = _target(targets, f"text_s{NUM_STAGES - i}")
                s, t = head(out.dec_stages[tap - 1], teacher, mask)
                terms[f"aam_txt{i}"] = cfg.w_text * self._loss(s, t)
        if self.gam is not None:
            emb = _target(targets, "text_emb")
            terms["gam"] = cfg.w_gam * self._loss(self.gam(out.enc_cls), emb)
        return terms


def _target(targets: dict[str, Tensor], key: str) -> Tensor:
    if key not in targets:
        raise KeyError(f"distillation targets lack {key!r} (have {sorted(targets)})")
    return targets[key]
