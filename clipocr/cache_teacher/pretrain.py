"""`teacher-pretrain`: train the small character-level CLIP that the offline demo uses as teacher.

Without network access there is no pretrained CLIP, so the demo needs a teacher it can ship
(DESIGN §6, last bullet). This trains an open_clip `CLIP` from a small config — a narrow ViT at
32×128 with tall reading-direction patches (one token per 4-pixel column) and a narrow text
tower over a 39-id character vocabulary (`CharVocab`) — on rendered words with open_clip's
contrastive `ClipLoss`, and saves a clipocr teacher config + safetensors weights that
`load_teacher` reads like any open_clip model.

Contrastive learning from scratch barely moves on a CPU for the first hundreds of steps (loss
stuck at ln(batch), DESIGN §6), so an **auxiliary CTC loss** reads the characters off the final
image tokens through a linear head (`pretrain_model`). Batches never hold the same label twice,
and retrieval accuracy (image → which of N held-out labels, top-1) is measured on held-out images
whose words never occur in the training set (`pretrain_data`).

The run is a `Pretrainer`: set-up (data, model, optimiser, the settings written to
``pretrain_args.json``), one `step` per batch, and a `checkpoint` that evaluates and saves a
usable teacher (`pretrain_report`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from clipocr.cache_teacher.char_tokenizer import CharVocab
from clipocr.cache_teacher.pretrain_config import PretrainConfig
from clipocr.cache_teacher.pretrain_data import (
    heldout_words,
    load_many,
    load_words,
    unique_label_batches,
)
from clipocr.cache_teacher.pretrain_model import (
    CtcHead,
    ctc_loss,
    evaluate_retrieval,
    lr_at,
    param_groups,
    small_teacher_config,
)
from clipocr.cache_teacher.pretrain_report import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    PretrainResult,
    save_teacher,
    write_history,
    write_report,
)
from clipocr.cache_teacher.teacher import TeacherConfig, load_teacher, text_forward
from clipocr.cache_teacher.weights import build_model
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.preprocess import normalize

__all__ = ["PretrainConfig", "PretrainResult", "Pretrainer", "pretrain"]

LOSS_WINDOW = 100  # steps the final losses of the summary average over


class Pretrainer:
    """One `teacher-pretrain` run: construction is the set-up, then `run` (or `step`s and
    `checkpoint`s). Construction seeds torch before building anything, so a run with a step
    budget is reproducible for a given seed and thread count."""

    def __init__(self, cfg: PretrainConfig) -> None:
        if not cfg.command:
            cfg = dataclasses.replace(cfg, command=shlex.join(sys.argv))
        self.cfg = cfg
        self.out = Path(cfg.out)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        cs = Charset.from_name(cfg.charset)
        self.vocab = CharVocab(cs.chars)
        self.images, self.labels, rejected = load_many(
            [Path(p) for p in cfg.data], cs, cfg.max_train
        )
        train_labels = set(self.labels)
        if cfg.val is not None:
            self.val_images, self.val_labels, val_seen = heldout_words(
                *load_words(Path(cfg.val), cs)[:2], train_labels, cfg.val_size
            )
        else:
            self.val_images, self.val_labels, val_seen = self.images[:0], [], 0
        self.teacher_config = small_teacher_config(
            cs.chars,
            width=cfg.width,
            layers=cfg.layers,
            heads=cfg.heads,
            embed_dim=cfg.embed_dim,
            patch=cfg.patch,
        )
        self.model = build_model(self.teacher_config["open_clip_config"])
        self.model.visual.output_tokens = True  # training also needs the patch tokens for CTC
        preprocess = self.teacher_config["preprocess"]
        self.mean, self.std = tuple(preprocess["mean"]), tuple(preprocess["std"])
        self.ctc_head = CtcHead(cfg.width, len(cs.chars), self.model.visual.grid_size)
        self.trainable = nn.ModuleDict({"clip": self.model, "ctc": self.ctc_head})
        self.optimizer = torch.optim.AdamW(
            param_groups(self.trainable, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
        )
        self.clip_loss = open_clip.ClipLoss()
        gen = torch.Generator().manual_seed(cfg.seed)
        self.batches = unique_label_batches(self.labels, cfg.batch_size, gen)
        self.result = PretrainResult(
            status="running",
            train_samples=len(self.labels),
            train_labels=len(train_labels),
            rejected=dict(rejected),
            val_words=len(self.val_labels),
            val_dropped_seen=val_seen,
            params=sum(p.numel() for p in self.model.parameters()),
        )
        self.history: list[dict] = []
        self.window: list[tuple[float, float, float]] = []  # (total, clip, ctc) loss per step
        self.step_count = 0
        self.start = time.monotonic()
        self.bar = tqdm(disable=True)
        cfg.save()

    def step(self, progress: float) -> None:
        """One optimisation step; `progress` (0..1 of the budget) sets the lr schedule."""
        cfg, model = self.cfg, self.model
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(progress, self.step_count, cfg.lr, cfg.warmup)
        idx = next(self.batches)
        batch_labels = [self.labels[i] for i in idx]
        x = normalize(self.images[idx], self.mean, self.std)
        pooled, tokens = model.visual(x)
        lengths = torch.tensor([len(s) for s in batch_labels])
        tokens_t = self.vocab.encode(batch_labels, int(lengths.max()) + 2)
        text = text_forward(model, tokens_t, lengths)[1]
        loss_clip = self.clip_loss(
            F.normalize(pooled, dim=-1), F.normalize(text, dim=-1), model.logit_scale.exp()
        )
        loss_ctc = ctc_loss(self.ctc_head(tokens), batch_labels, self.vocab)
        loss = loss_clip + cfg.ctc_weight * loss_ctc
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.trainable.parameters(), 1.0)
        self.optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        self.step_count += 1
        self.window.append((loss.item(), loss_clip.item(), loss_ctc.item()))
        if self.step_count % cfg.log_every == 0:
            self._log()

    def _log(self) -> None:
        recent = self.window[-self.cfg.log_every :]
        entry = {
            "kind": "train",
            "step": self.step_count,
            "minutes": (time.monotonic() - self.start) / 60,
            "loss": sum(r[0] for r in recent) / len(recent),
            "clip_loss": sum(r[1] for r in recent) / len(recent),
            "ctc_loss": sum(r[2] for r in recent) / len(recent),
            "lr": self.optimizer.param_groups[0]["lr"],
            "logit_scale": self.model.logit_scale.exp().item(),
        }
        self.history.append(entry)
        self.bar.set_postfix(loss=f"{entry['loss']:.3f}", ctc=f"{entry['ctc_loss']:.3f}")

    def checkpoint(self, status: str) -> None:
        """Evaluate on the held-out words (if any) and save a usable teacher + history + report."""
        step, elapsed = self.step_count, time.monotonic() - self.start
        if self.val_labels:
            metrics = evaluate_retrieval(
                self.model, self.vocab, self.val_images, self.val_labels, self.mean, self.std,
                self.ctc_head,
            )  # fmt: skip
            self.history.append({"kind": "eval", "step": step, "minutes": elapsed / 60, **metrics})
            self.bar.write(f"[eval] step {step} ({elapsed / 60:.1f} min): {json.dumps(metrics)}")
        weights = save_teacher(self.model, self.teacher_config, self.out)
        recent = self.window[-LOSS_WINDOW:] or [(float("nan"),) * 3]
        self.result = dataclasses.replace(
            self.result,
            status=status,
            steps=step,
            samples=step * self.cfg.batch_size,
            minutes=elapsed / 60,
            weights_bytes=weights.stat().st_size,
            loss_window=len(self.window[-LOSS_WINDOW:]),
            final_loss=sum(r[0] for r in recent) / len(recent),
            final_clip_loss=sum(r[1] for r in recent) / len(recent),
            final_ctc_loss=sum(r[2] for r in recent) / len(recent),
        )
        write_history(self.out, self.history)
        write_report(self.out, self.cfg, self.result, self.history)

    def run(self) -> PretrainResult:
        """Train until the step or time budget is spent, checkpointing every `eval_every_min`
        minutes and at the end; then re-measure the saved teacher as `load_teacher` loads it."""
        cfg = self.cfg
        self.model.train()
        self.start = time.monotonic()
        last_eval = self.start
        self.bar = tqdm(
            total=cfg.steps, disable=not cfg.progress, mininterval=10, dynamic_ncols=True
        )
        while True:
            elapsed = time.monotonic() - self.start
            if (cfg.steps is not None and self.step_count >= cfg.steps) or (
                cfg.minutes is not None and elapsed >= cfg.minutes * 60
            ):
                break
            if cfg.steps is not None:
                progress = self.step_count / cfg.steps
            else:
                progress = elapsed / (cfg.minutes * 60)
            self.step(progress)
            self.bar.update(1)
            if time.monotonic() - last_eval >= cfg.eval_every_min * 60:
                self.checkpoint("running")
                last_eval = time.monotonic()
        self.bar.close()
        self.checkpoint("finished")
        if self.val_labels:
            out = self.out
            teacher = load_teacher(
                TeacherConfig(
                    model=str(out / CONFIG_NAME),
                    pretrained=str(out / WEIGHTS_NAME),
                    charset=cfg.charset,
                )
            )
            loaded = evaluate_retrieval(
                teacher.model, self.vocab, self.val_images, self.val_labels, self.mean, self.std
            )
            self.result = dataclasses.replace(self.result, loaded=loaded)
            write_report(out, cfg, self.result, self.history)
        return self.result


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Train the small char-level CLIP on the words of `cfg.data`; write the teacher to `cfg.out`.

    Stops after `cfg.steps` (the lr schedule then follows steps: reproducible for a given seed and
    thread count) or after `cfg.minutes` (the schedule then follows wall time), whichever comes
    first. Every `cfg.eval_every_min` minutes it measures retrieval on `cfg.val` and saves a
    usable teacher (config, weights, history, settings, TEACHER.md) to `cfg.out`, so an
    interrupted run still leaves one.
    """
    return Pretrainer(cfg).run()
