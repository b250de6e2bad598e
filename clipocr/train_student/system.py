"""Training logic around the pure-`nn` student: recognition loss plus the distillation heads.

PARSeq splits model (`nn.Module` with no training logic) from system (loss, optimisation); this is
the system half. The heads exist only here: the exported inference checkpoint is the student alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as tfn
from torch import Tensor, nn

from clipocr.pipeline.teacher_store import ALL_TAPS
from clipocr.train_student.heads import DistillConfig, DistillHeads
from clipocr.train_student.model import Student

# The store's taps, plus the mask of valid text rows that the batch collation adds.
TARGET_NAMES = (*ALL_TAPS, "text_mask")


def ctc_loss(logits: Tensor, tgt_out: Tensor, blank: int, pad: int) -> Tensor:
    """CTC of per-column logits ``(B, W, C+1)`` against the labels held in `tgt_out`.

    The labels are read back from the teacher-forcing targets (``c1 … cL, EOS, PAD …``), so the
    batch needs no extra field; EOS is the blank. A label longer than W frames cannot be aligned:
    its infinite loss is zeroed rather than poisoning the batch.
    """
    keep = (tgt_out != pad) & (tgt_out != blank)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (W, B, C+1)
    frames = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
    return tfn.ctc_loss(
        log_probs, tgt_out[keep], frames, keep.sum(1), blank=blank, zero_infinity=True
    )


class DistillSystem(nn.Module):
    """Student + (optional) heads; `forward(batch)` returns the named loss terms and their sum.

    Every term has weight 1 unless the `DistillConfig` says otherwise (DESIGN §6):
    ``L = CE + GAM + Σ text AAM + Σ image AAM``. A student with a CTC head (an addition to the
    paper, issue 13) adds the term ``ctc`` = ``ctc_weight`` × CTC on its encoder tokens: a
    per-column reading loss that makes the encoder see characters long before the decoder's
    cross-attention has learnt where to look.
    """

    def __init__(
        self,
        student: Student,
        teacher_dims: dict[str, int] | None = None,
        distill: DistillConfig | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.heads = (
            DistillHeads(student.cfg, teacher_dims, distill or DistillConfig())
            if teacher_dims is not None
            else None
        )

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """`batch` holds normalised float images and tensors already on the model's device."""
        out = self.student(batch["images"], batch["tgt_in"])
        pad = self.student.charset.pad_id
        terms = {
            "ce": tfn.cross_entropy(
                out.logits.flatten(0, 1).float(), batch["tgt_out"].flatten(), ignore_index=pad
            )
        }
        if out.ctc_logits is not None:
            ctc = ctc_loss(out.ctc_logits, batch["tgt_out"], self.student.charset.eos_id, pad)
            terms["ctc"] = self.student.cfg.ctc_weight * ctc
        if self.heads is not None:
            targets = {k: batch[k] for k in TARGET_NAMES if k in batch}
            terms.update(self.heads(out, targets))
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms


def param_groups(system: DistillSystem, lr: float, dec_lr_scale: float) -> list[dict]:
    """AdamW groups: the decoder side (token/position embeddings, decoder layers, its norm and
    classifier) at ``lr × dec_lr_scale``, everything else (encoder, CTC head, distillation
    heads) at `lr`. Why: the decoder's cross-attention learns where to look far more slowly
    than the encoder learns to see (issue 13), so it was given its own rate to try; on the demo
    2× and 4× were worse than 1 (docs/issue13_findings.md), hence the default of one rate."""
    student = system.student
    decoder = [student.tok_embed, student.dec_layers, student.dec_norm, student.head]
    dec_ids = {id(p) for m in decoder for p in m.parameters()} | {id(student.pos_queries)}
    dec = [p for p in system.parameters() if id(p) in dec_ids]
    rest = [p for p in system.parameters() if id(p) not in dec_ids]
    return [{"params": rest, "lr": lr}, {"params": dec, "lr": lr * dec_lr_scale}]
