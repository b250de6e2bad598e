"""`teacher-pretrain`'s model pieces: the small char-level CLIP's config, the auxiliary CTC head
and loss, the optimiser's parameter groups and lr schedule, and held-out retrieval accuracy.

The CTC head reads the characters off the final image tokens so that the image tower learns to
see characters from the first step (contrastive learning from scratch barely moves on a CPU for
the first hundreds of steps, DESIGN §6); it is a training device only and is never saved.
"""

from __future__ import annotations

import math

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from clipocr.cache_teacher.char_tokenizer import CharVocab
from clipocr.cache_teacher.weights import teacher_config_json
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.preprocess import IMG_H, IMG_W, normalize

RETRIEVAL_SIZES = (100, 1000)


def small_teacher_config(
    chars: str,
    *,
    width: int = 128,
    layers: int = 4,
    heads: int = 4,
    embed_dim: int = 256,
    patch: tuple[int, int] = (32, 4),
) -> dict:
    """clipocr teacher config of a small char-level CLIP at 32×128 (`teacher_config_json`)."""
    vocab = CharVocab(chars)
    open_clip_config = {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": [IMG_H, IMG_W],
            "patch_size": list(patch),
            "width": width,
            "layers": layers,
            "head_width": width // heads,
        },
        "text_cfg": {
            "context_length": Charset.from_name("36").max_len + 2,
            "vocab_size": vocab.vocab_size,
            "width": width,
            "heads": heads,
            "layers": layers,
        },
    }
    return teacher_config_json(
        open_clip_config,
        vocab.describe(),
        open_clip.OPENAI_DATASET_MEAN,
        open_clip.OPENAI_DATASET_STD,
    )


class CtcHead(nn.Module):
    """Linear per-column character classifier on the final image tokens (blank = id 0)."""

    def __init__(self, width: int, num_chars: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(width, num_chars + 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, H·W, D)`` → log-probs ``(W, B, C + 1)`` (rows averaged)."""
        b, _, d = tokens.shape
        cols = tokens.reshape(b, self.grid[0], self.grid[1], d).mean(dim=1)
        return self.proj(cols).log_softmax(-1).transpose(0, 1)


def ctc_greedy(log_probs: torch.Tensor, chars: str) -> list[str]:
    """Best-path decoding: argmax per column, merge repeats, drop blanks."""
    out = []
    for seq in log_probs.argmax(-1).transpose(0, 1).tolist():
        prev, text = 0, []
        for i in seq:
            if i != prev and i != 0:
                text.append(chars[i - 1])
            prev = i
        out.append("".join(text))
    return out


def ctc_loss(log_probs: torch.Tensor, labels: list[str], vocab: CharVocab) -> torch.Tensor:
    targets = torch.tensor([i for s in labels for i in vocab.char_ids(s)], dtype=torch.long)
    target_lengths = torch.tensor([len(s) for s in labels], dtype=torch.long)
    input_lengths = torch.full((len(labels),), log_probs.shape[0], dtype=torch.long)
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, zero_infinity=True)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's convention: no weight decay on gains, biases, 1-D embeddings, logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "logit_scale" in name or "bias" in name or ".ln" in name
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(progress: float, step: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at ``progress = 1``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------------------------------------
# evaluation


@torch.inference_mode()
def evaluate_retrieval(
    model: nn.Module,
    vocab: CharVocab,
    images: torch.Tensor,
    labels: list[str],
    mean,
    std,
    ctc_head: CtcHead | None = None,
    batch_size: int = 250,
) -> dict:
    """Top-1 image→label retrieval among the first N held-out words, N in `RETRIEVAL_SIZES`.

    Labels are distinct, so chance is 1/N. With `ctc_head`, also the CTC word accuracy.
    """
    was_training = model.training
    model.eval()
    img_emb, txt_emb, ctc_correct = [], [], 0
    for start in range(0, len(labels), batch_size):
        x = normalize(images[start : start + batch_size], mean, std)
        chunk = labels[start : start + batch_size]
        if ctc_head is not None:
            pooled, tokens = model.visual(x)
            preds = ctc_greedy(ctc_head(tokens), vocab.chars)
            ctc_correct += sum(p == t for p, t in zip(preds, chunk, strict=True))
        else:
            pooled = model.encode_image(x)
        img_emb.append(F.normalize(pooled, dim=-1))
        tokens = vocab.encode(chunk, model.context_length)
        txt_emb.append(model.encode_text(tokens, normalize=True))
    model.train(was_training)
    img, txt = torch.cat(img_emb), torch.cat(txt_emb)
    out = {}
    for n in RETRIEVAL_SIZES:
        n = min(n, len(labels))
        hits = (img[:n] @ txt[:n].T).argmax(dim=1) == torch.arange(n)
        out[f"top1@{n}"] = hits.float().mean().item()
    if ctc_head is not None:
        out["ctc_word_acc"] = ctc_correct / len(labels)
    return out
