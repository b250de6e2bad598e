"""A PNG of a run's curves (loss terms, validation accuracy) from its history.jsonl."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

SKIP = {"step", "lr", "grad_norm", "samples_per_s"}
# Validation accuracies (right panel), by the head that read: the decoder (AR) and the CTC head.
VAL_PREFIXES = {"val_acc/": "", "val_ctc_acc/": "ctc "}


def _val_label(key: str) -> str | None:
    """The right panel's legend for a validation key, or None for a loss term (left panel)."""
    for prefix, head in VAL_PREFIXES.items():
        if key.startswith(prefix):
            return head + key.removeprefix(prefix)
    return None


def plot_curves(history: Path, out: Path) -> Path:
    """Left: every logged loss term (log scale); right: validation accuracy per set and head."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in Path(history).read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in SKIP:
                series[key].append((record["step"], value))
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for key, points in sorted(series.items()):
        label = _val_label(key)
        steps, values = zip(*points)
        if label is None:
            ax_loss.plot(steps, values, label=key)
        else:
            ax_val.plot(steps, values, label=label, marker=".", ls="--" if "ctc" in key else "-")
    ax_loss.set(title="training loss terms", xlabel="step", yscale="log")
    ax_val.set(title="validation word accuracy (%)", xlabel="step")
    for ax in (ax_loss, ax_val):
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(Path(history).parent.name)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
