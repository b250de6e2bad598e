"""`teacher-pretrain`'s outputs: the teacher (config + fp16 weights), its history, TEACHER.md,
and `PretrainResult`, the summary TEACHER.md reports.

Every file is written under a temporary name and renamed, so a run killed mid-write still
leaves the previous checkpoint's complete, loadable teacher.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from clipocr.cache_teacher.pretrain_config import ARGS_NAME, PretrainConfig

CONFIG_NAME = "teacher.json"
WEIGHTS_NAME = "teacher.safetensors"
HISTORY_NAME = "history.json"
REPORT_NAME = "TEACHER.md"


@dataclass
class PretrainResult:
    """What a `teacher-pretrain` run made and how good it is; updated at every checkpoint."""

    status: str  # running | finished
    train_samples: int
    train_labels: int  # distinct training words
    rejected: dict[str, int]  # training labels skipped, by reason
    val_words: int  # distinct held-out words unseen in training
    val_dropped_seen: int  # held-out samples dropped because their word is a training word
    params: int
    loss_window: int = 0  # steps the final losses average over (at most 100)
    steps: int = 0
    samples: int = 0
    minutes: float = 0.0
    weights_bytes: int = 0
    final_loss: float = float("nan")
    final_clip_loss: float = float("nan")
    final_ctc_loss: float = float("nan")
    # retrieval re-measured on the saved fp16 teacher loaded through `load_teacher` (with --val)
    loaded: dict[str, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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


def write_report(
    out: Path, cfg: PretrainConfig, result: PretrainResult, history: list[dict]
) -> None:
    """TEACHER.md: how the shipped teacher was made and how good it is."""
    evals = [h for h in history if h["kind"] == "eval"]
    lines = [
        "# Demo teacher",
        "",
        f"Status: **{result.status}** — {result.steps} steps, {result.samples} samples,"
        f" {result.minutes:.1f} min on {cfg.threads} CPU thread(s).",
        "",
        "Made by:",
        "",
        "```",
        cfg.command or "",
        "```",
        "",
        *([cfg.notes, ""] if cfg.notes else []),
        f"Seed {cfg.seed}; training data {', '.join(f'`{p}`' for p in cfg.data)} "
        f"({result.train_samples} samples, "
        f"{result.train_labels} distinct words); held-out `{cfg.val}` "
        f"({result.val_words} distinct words unseen in training).",
        "",
        f"Model: open_clip `CLIP` from `{CONFIG_NAME}`, {result.params:,} parameters, "
        f"weights `{WEIGHTS_NAME}` (fp16, {result.weights_bytes / 1e6:.1f} MB). "
        "Loss: open_clip `ClipLoss` + "
        f"{cfg.ctc_weight} × CTC on the final image tokens (head not saved).",
        "",
        f"Final training loss (mean of the last {result.loss_window} steps): "
        f"{result.final_loss:.3f} (contrastive {result.final_clip_loss:.3f}, "
        f"CTC {result.final_ctc_loss:.3f}).",
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
    if result.loaded is not None:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in result.loaded.items())
        lines += ["", f"Re-measured after saving, loaded through `load_teacher` (fp16): {figures}."]
    lines += [
        "",
        "Load it like any open_clip teacher:",
        "",
        "```python",
        "from clipocr.cache_teacher.teacher import DEFAULT_DEMO_TEACHER, load_teacher",
        "",  # as `ruff format` writes a Python block in Markdown (CI checks the shipped record)
        "teacher = load_teacher(DEFAULT_DEMO_TEACHER)",
        "```",
        "",
        f"Full metrics: `{HISTORY_NAME}`; resolved arguments: `{ARGS_NAME}`.",
        "",
    ]
    _write_atomic(out / REPORT_NAME, "\n".join(lines).encode())


def write_history(out: Path, history: list[dict]) -> None:
    _write_atomic(out / HISTORY_NAME, json.dumps(history, indent=1).encode())
