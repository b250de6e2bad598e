"""Make the renderer's table of text/background colour pairs from real word crops (DESIGN §3).

SynthTIGER and MJSynth colour rendered words from colour statistics of real images, because
hand-drawn palettes give colour combinations real signs never have (and miss the low-contrast,
washed-out ones they do have). For each real training crop this splits the pixels into two
colour clusters (2-means in RGB on a 24 px high copy); the cluster that holds most of the crop's
border pixels is the background, the other the text. Each crop gives one row
``text R, G, B, background R, G, B`` (uint8), written to ``colour_pairs.npy``; the renderer
draws a row per sample (`clipocr/pipeline/synth/colours.py`).

Crops that any held-back evaluation uses are left out, so no test crop shapes the data the
student trains on: the demo's 500 per set (``random.Random(0).sample``) and the reference run's
500 per set (``random.Random(0).shuffle``, first 500).

    .venv/bin/python bench/synth_colours.py --real-data ../shared/data/real-train
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image

from clipocr.pipeline.sources import ImageFolderSource

SETS = ("IIIT5k_train_2000", "IC15_train_4468")
HELD_BACK = 500  # per set, as `clipocr demo --real-data` and bench/reference.py hold back
OUT = Path(__file__).resolve().parents[1] / "clipocr" / "assets" / "synth" / "colour_pairs.npy"
WORK_H = 24  # crops are shrunk to this height first: colour, not detail, is measured


def held_back(entries: list[tuple[int, str, str]]) -> set[str]:
    """Relative paths of the crops the demo and the reference run score on (scale 1, seed 0)."""
    demo = random.Random(0).sample(entries, min(HELD_BACK, len(entries)))
    shuffled = list(entries)
    random.Random(0).shuffle(shuffled)
    return {rel for _, rel, _ in demo} | {rel for _, rel, _ in shuffled[:HELD_BACK]}


def two_means(pixels: np.ndarray, border: np.ndarray, iters: int = 8) -> np.ndarray:
    """Centres (2, 3) of a 2-means split of `pixels` (N, 3): row 0 the border's cluster.

    Seeded with the border's median colour and the pixel farthest from it, so the first
    centre starts on the background and the second on the ink."""
    bg = np.median(border, axis=0)
    fg = pixels[np.argmax(((pixels - bg) ** 2).sum(1))]
    centres = np.stack([bg, fg]).astype(np.float32)
    for _ in range(iters):
        d = ((pixels[:, None, :] - centres[None]) ** 2).sum(-1)
        near = d.argmin(1)
        for k in range(2):
            if (near == k).any():
                centres[k] = pixels[near == k].mean(0)
    d_border = ((border[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    if d_border.mean() > 0.5:  # most border pixels sit in cluster 1: that one is background
        centres = centres[::-1]
    return centres


def crop_pair(path: Path) -> np.ndarray:
    """(text RGB, background RGB) of one crop as 6 uint8."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    img = img.resize((max(4, round(w * WORK_H / h)), WORK_H), Image.BOX)
    arr = np.asarray(img, np.float32)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg, text = two_means(arr.reshape(-1, 3), border)
    return np.rint(np.concatenate([text, bg])).clip(0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-data", type=Path, default=Path("../shared/data/real-train"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = []
    for name in SETS:
        source = ImageFolderSource(args.real_data / name)
        skip = held_back(source.entries)
        kept = [rel for _, rel, _ in source.entries if rel not in skip]
        rows += [crop_pair(source.root / rel) for rel in kept]
        print(f"{name}: {len(kept)} crops used, {len(skip)} held back")
    table = np.stack(rows)
    luma = np.array([0.299, 0.587, 0.114])
    contrast = np.abs(table[:, :3] @ luma - table[:, 3:] @ luma)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, table)
    print(
        f"wrote {len(table)} pairs to {args.out}; |luma(text) - luma(bg)| median "
        f"{np.median(contrast):.0f}, 10th pct {np.percentile(contrast, 10):.0f}; "
        f"light text on dark {np.mean(table[:, :3] @ luma > table[:, 3:] @ luma):.0%}"
    )


if __name__ == "__main__":
    main()
