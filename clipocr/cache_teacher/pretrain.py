"""`teacher-pretrain`: train the small character-level CLIP that the offline demo uses as teacher.

Without network access there is no pretrained CLIP, so the demo needs a teacher it can ship
(DESIGN §6, last bullet). This trains an open_clip `CLIP` from a small config — a narrow ViT at
32×128 with tall reading-direction patches (one token per 4-pixel column) and a narrow text
tower over a 39-id character vocabulary (`CharVocab`) — on rendered words with open_clip's
contrastive `ClipLoss`, and saves a clipocr teacher config + safetensors weights that
`load_teacher` reads like any open_clip model.

Contrastive learning from scratch barely moves on a CPU for the first hundreds of steps (loss
stuck at ln(batch), DESIGN §6), so an **auxiliary CTC loss** reads the characters off the final
image tokens through a linear head: the image tower learns to see characters from the first
step, which is also what the student needs from its teacher's image stages. The CTC head is a
training device only and is not saved.

Batches never hold the same label twice: a duplicate word would be a false negative for the
contrastive loss. Retrieval accuracy (image → which of N held-out labels, top-1) is measured on
held-out images whose words never occur in the training set.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from clipocr.cache_teacher.char_tokenizer import CharVocab
from clipocr.cache_teacher.teacher import (
    TeacherConfig,
    build_model,
    load_teacher,
    teacher_config_json,
    text_forward,
)
from clipocr.pipeline.charset import Charset, LabelRejected
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import LmdbReader
from clipocr.pipeline.preprocess import IMG_H, IMG_W, load_uint8, normalize

CONFIG_NAME = "teacher.json"
WEIGHTS_NAME = "teacher.safetensors"
HISTORY_NAME = "history.json"
ARGS_NAME = "pretrain_args.json"
REPORT_NAME = "TEACHER.md"
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


# ------------------------------------------------------------------------------------------------
# data


def load_words(
    path: Path, charset: Charset, limit: int | None = None
) -> tuple[torch.Tensor, list[str], Counter]:
    """All images of an STR LMDB as one uint8 ``(N, 3, 32, 128)`` tensor + prepared labels.

    Held in memory (12 KB/sample) because the CPU run revisits every sample several times and
    decoding each time would cost as much as a training step's data loading budget.
    """
    reader = LmdbReader(path)
    cap = min(len(reader), limit) if limit else len(reader)
    images = torch.empty((cap, 3, IMG_H, IMG_W), dtype=torch.uint8)
    labels: list[str] = []
    rejected: Counter[str] = Counter()
    for index, data, raw in reader.iter_raw():
        if len(labels) == cap:
            break
        try:
            label = charset.prepare(raw)
            images[len(labels)] = load_uint8(data)
        except LabelRejected as err:
            rejected[err.reason] += 1
            continue
        except Exception as err:  # PIL raises many types on corrupt data
            raise InputError(f"{path}: sample {index}: undecodable image ({err})") from None
        labels.append(label)
    rejected.update(reader.skipped)
    reader.close()
    return images[: len(labels)], labels, rejected


def load_many(
    paths: Sequence[Path], charset: Charset, limit: int | None = None
) -> tuple[torch.Tensor, list[str], Counter]:
    """`load_words` over several LMDBs, concatenated (at most `limit` samples in all)."""
    images, labels, rejected = [], [], Counter()
    for path in paths:
        left = None if limit is None else limit - len(labels)
        if left == 0:
            break
        imgs, labs, rej = load_words(path, charset, left)
        images.append(imgs)
        labels += labs
        rejected.update(rej)
    return torch.cat(images), labels, rejected


def unique_label_batches(
    labels: list[str], batch_size: int, gen: torch.Generator
) -> Iterator[list[int]]:
    """Endless random batches of sample indices with no label twice in a batch.

    A repeated label in a batch is skipped for the rest of that pass (it comes back in a later
    pass), which keeps every contrastive target a true positive.
    """
    if len(set(labels)) < batch_size:
        raise InputError(f"only {len(set(labels))} distinct labels for batch size {batch_size}")
    while True:
        batch: list[int] = []
        seen: set[str] = set()
        for i in torch.randperm(len(labels), generator=gen).tolist():
            if labels[i] in seen:
                continue
            batch.append(i)
            seen.add(labels[i])
            if len(batch) == batch_size:
                yield batch
                batch, seen = [], set()


def heldout_words(
    images: torch.Tensor, labels: list[str], train_labels: set[str], size: int
) -> tuple[torch.Tensor, list[str], int]:
    """First `size` held-out samples with distinct labels unseen in training (+ count dropped)."""
    keep, seen, dropped = [], set(), 0
    for i, label in enumerate(labels):
        if label in train_labels:
            dropped += 1
        elif label not in seen:
            seen.add(label)
            keep.append(i)
        if len(keep) == size:
            break
    return images[keep], [labels[i] for i in keep], dropped


# ------------------------------------------------------------------------------------------------
# model pieces used only while training


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
def evaluate(
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


# ------------------------------------------------------------------------------------------------
# saving


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_teacher(model: nn.Module, config: dict, out: Path) -> Path:
    """Write the teacher config JSON and fp16 safetensors weights (CTC head excluded)."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = out / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / WEIGHTS_NAME)
    _write_atomic(out / CONFIG_NAME, json.dumps(config, indent=2).encode())
    return out / WEIGHTS_NAME


def write_report(out: Path, args: dict, summary: dict, history: list[dict]) -> None:
    """TEACHER.md: how the shipped teacher was made and how good it is."""
    evals = [h for h in history if h["kind"] == "eval"]
    lines = [
        "# Demo teacher",
        "",
        f"Status: **{summary['status']}** — {summary['steps']} steps, {summary['samples']} samples,"
        f" {summary['minutes']:.1f} min on {args['threads']} CPU thread(s).",
        "",
        "Made by:",
        "",
        "```",
        args["command"],
        "```",
        "",
        *([args["notes"], ""] if args.get("notes") else []),
        f"Seed {args['seed']}; training data {', '.join(f'`{p}`' for p in args['data'])} "
        f"({summary['train_samples']} samples, "
        f"{summary['train_labels']} distinct words); held-out `{args['val']}` "
        f"({summary['val_words']} distinct words unseen in training).",
        "",
        f"Model: open_clip `CLIP` from `{CONFIG_NAME}`, {summary['params']:,} parameters, "
        f"weights `{WEIGHTS_NAME}` (fp16, {summary['weights_bytes'] / 1e6:.1f} MB). "
        "Loss: open_clip `ClipLoss` + "
        f"{args['ctc_weight']} × CTC on the final image tokens (head not saved).",
        "",
        f"Final training loss (mean of the last {summary['loss_window']} steps): "
        f"{summary['final_loss']:.3f} (contrastive {summary['final_clip_loss']:.3f}, "
        f"CTC {summary['final_ctc_loss']:.3f}).",
        "",
        "Zero-shot word retrieval on held-out rendered words (image → which of N distinct "
        "unseen labels, top-1; chance 1/N):",
        "",
    ]
    keys = sorted({k for h in evals for k in h if k.startswith("top1@")}, key=lambda k: int(k[5:]))
    keys += ["ctc_word_acc"]
    lines += [
        "| step | minutes | " + " | ".join(keys) + " |",
        "|---:|---:|" + "---:|" * len(keys),
    ]
    for h in evals:
        cells = [f"{h[k]:.3f}" if k in h else "" for k in keys]
        lines.append(f"| {h['step']} | {h['minutes']:.1f} | " + " | ".join(cells) + " |")
    if "loaded" in summary:
        loaded = summary["loaded"]
        figures = ", ".join(f"{k} {v:.3f}" for k, v in loaded.items())
        lines += ["", f"Re-measured after saving, loaded through `load_teacher` (fp16): {figures}."]
    lines += [
        "",
        "Load it like any open_clip teacher:",
        "",
        "```python",
        "from clipocr.cache_teacher.teacher import DEFAULT_DEMO_TEACHER, load_teacher",
        "teacher = load_teacher(DEFAULT_DEMO_TEACHER)",
        "```",
        "",
        "Full metrics: `history.json`; resolved arguments: `pretrain_args.json`.",
        "",
    ]
    _write_atomic(out / REPORT_NAME, "\n".join(lines).encode())


# ------------------------------------------------------------------------------------------------
# training


def pretrain(
    data: Path | Sequence[Path],
    out: Path,
    *,
    val: Path | None = None,
    steps: int | None = None,
    minutes: float | None = None,
    batch_size: int = 128,
    lr: float = 5e-4,
    warmup: int = 200,
    weight_decay: float = 0.1,
    ctc_weight: float = 1.0,
    seed: int = 0,
    threads: int = 1,
    charset: str = "36",
    width: int = 128,
    layers: int = 4,
    heads: int = 4,
    embed_dim: int = 256,
    patch: tuple[int, int] = (32, 4),
    max_train: int | None = None,
    val_size: int = 1000,
    eval_every_min: float = 5.0,
    log_every: int = 20,
    command: str | None = None,
    notes: str | None = None,
    progress: bool = True,
) -> dict:
    """Train the small char-level CLIP on the words of LMDB(s) `data`; write the teacher to `out`.

    Stops after `steps` (the lr schedule then follows steps: reproducible for a given seed and
    thread count) or after `minutes` (the schedule then follows wall time), whichever comes
    first. Every `eval_every_min` minutes it measures retrieval on `val` and saves a usable
    teacher (config, weights, history, arguments, TEACHER.md) to `out`, so an interrupted run
    still leaves one. Returns the summary that TEACHER.md reports.
    """
    if steps is None and minutes is None:
        raise InputError("give --steps or --minutes (the training budget)")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cs = Charset.from_name(charset)
    vocab = CharVocab(cs.chars)
    data = [Path(data)] if isinstance(data, (str, Path)) else [Path(p) for p in data]
    args = {
        "data": [str(p) for p in data],
        "val": None if val is None else str(val),
        "out": str(out),
        "steps": steps,
        "minutes": minutes,
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "ctc_weight": ctc_weight,
        "seed": seed,
        "threads": threads,
        "charset": charset,
        "width": width,
        "layers": layers,
        "heads": heads,
        "embed_dim": embed_dim,
        "patch": list(patch),
        "max_train": max_train,
        "val_size": val_size,
        "command": command or shlex.join(sys.argv),
        "notes": notes,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    images, labels, rejected = load_many(data, cs, max_train)
    train_labels = set(labels)
    if val is not None:
        val_images, val_labels, val_seen = heldout_words(
            *load_words(val, cs)[:2], train_labels, val_size
        )
    else:
        val_images, val_labels, val_seen = images[:0], [], 0
    config = small_teacher_config(
        cs.chars, width=width, layers=layers, heads=heads, embed_dim=embed_dim, patch=patch
    )
    model = build_model(config["open_clip_config"])
    model.visual.output_tokens = True  # training also needs the patch tokens for CTC
    mean, std = tuple(config["preprocess"]["mean"]), tuple(config["preprocess"]["std"])
    ctc_head = CtcHead(width, len(cs.chars), model.visual.grid_size)
    trainable = nn.ModuleDict({"clip": model, "ctc": ctc_head})
    optimizer = torch.optim.AdamW(
        param_groups(trainable, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6
    )
    clip_loss = open_clip.ClipLoss()
    gen = torch.Generator().manual_seed(seed)
    batches = unique_label_batches(labels, batch_size, gen)
    summary = {
        "status": "running",
        "train_samples": len(labels),
        "train_labels": len(train_labels),
        "rejected": dict(rejected),
        "val_words": len(val_labels),
        "val_dropped_seen": val_seen,
        "params": sum(p.numel() for p in model.parameters()),
        "loss_window": 0,
    }
    history: list[dict] = []
    window: list[tuple[float, float, float]] = []
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / ARGS_NAME, json.dumps(args, indent=2).encode())

    def checkpoint(step: int, elapsed: float, status: str) -> None:
        if val_labels:
            metrics = evaluate(model, vocab, val_images, val_labels, mean, std, ctc_head)
            history.append({"kind": "eval", "step": step, "minutes": elapsed / 60, **metrics})
            bar.write(f"[eval] step {step} ({elapsed / 60:.1f} min): {json.dumps(metrics)}")
        weights = save_teacher(model, config, out)
        recent = window[-100:] or [(float("nan"),) * 3]
        summary.update(
            status=status,
            steps=step,
            samples=step * batch_size,
            minutes=elapsed / 60,
            weights_bytes=weights.stat().st_size,
            loss_window=len(window[-100:]),
            final_loss=sum(r[0] for r in recent) / len(recent),
            final_clip_loss=sum(r[1] for r in recent) / len(recent),
            final_ctc_loss=sum(r[2] for r in recent) / len(recent),
        )
        _write_atomic(out / HISTORY_NAME, json.dumps(history, indent=1).encode())
        write_report(out, args, summary, history)

    model.train()
    start = time.monotonic()
    last_eval = start
    step = 0
    bar = tqdm(total=steps, disable=not progress, mininterval=10, dynamic_ncols=True)
    while True:
        elapsed = time.monotonic() - start
        if (steps is not None and step >= steps) or (
            minutes is not None and elapsed >= minutes * 60
        ):
            break
        progress_frac = step / steps if steps is not None else elapsed / (minutes * 60)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress_frac, step, lr, warmup)
        idx = next(batches)
        batch_labels = [labels[i] for i in idx]
        x = normalize(images[idx], mean, std)
        pooled, tokens = model.visual(x)
        lengths = torch.tensor([len(s) for s in batch_labels])
        tokens_t = vocab.encode(batch_labels, int(lengths.max()) + 2)
        text = text_forward(model, tokens_t, lengths)[1]
        loss_clip = clip_loss(
            F.normalize(pooled, dim=-1), F.normalize(text, dim=-1), model.logit_scale.exp()
        )
        loss_ctc = ctc_loss(ctc_head(tokens), batch_labels, vocab)
        loss = loss_clip + ctc_weight * loss_ctc
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(trainable.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        window.append((loss.item(), loss_clip.item(), loss_ctc.item()))
        bar.update(1)
        if step % log_every == 0:
            recent = window[-log_every:]
            entry = {
                "kind": "train",
                "step": step,
                "minutes": (time.monotonic() - start) / 60,
                "loss": sum(r[0] for r in recent) / len(recent),
                "clip_loss": sum(r[1] for r in recent) / len(recent),
                "ctc_loss": sum(r[2] for r in recent) / len(recent),
                "lr": optimizer.param_groups[0]["lr"],
                "logit_scale": model.logit_scale.exp().item(),
            }
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", ctc=f"{entry['ctc_loss']:.3f}")
        if time.monotonic() - last_eval >= eval_every_min * 60:
            checkpoint(step, time.monotonic() - start, "running")
            last_eval = time.monotonic()
    bar.close()
    checkpoint(step, time.monotonic() - start, "finished")
    if val_labels:
        teacher = load_teacher(
            TeacherConfig(
                model=str(out / CONFIG_NAME), pretrained=str(out / WEIGHTS_NAME), charset=charset
            )
        )
        summary["loaded"] = evaluate(teacher.model, vocab, val_images, val_labels, mean, std)
        write_report(out, args, summary, history)
    return summary
