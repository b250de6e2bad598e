"""A PNG of a run's curves (loss terms, validation accuracy) from its history.jsonl."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

SKIP = {"step", "lr", "grad_norm", "samples_per_s"}


def plot_curves(history: Path, out: Path) -> Path:
    """Left: every logged loss term (log scale); right: validation accuracy per set."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in Path(history).read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in SKIP:
                series[key].append((record["step"], value))
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for key, points in sorted(series.items()):
        ax = ax_val if key.startswith("val_acc/") else ax_loss
        steps, values = zip(*points)
        ax.plot(
            steps, values, label=key.removeprefix("val_acc/"), marker="." if ax is ax_val else None
        )
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
