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


class DistillSystem(nn.Module):
    """Student + (optional) heads; `forward(batch)` returns the named loss terms and their sum.

    Every term has weight 1 unless the `DistillConfig` says otherwise (DESIGN §6):
    ``L = CE + GAM + Σ text AAM + Σ image AAM``.
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
        if self.heads is not None:
            targets = {k: batch[k] for k in TARGET_NAMES if k in batch}
            terms.update(self.heads(out, targets))
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms
