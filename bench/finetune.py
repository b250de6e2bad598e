"""Fine-tuning the bundled student on a style it reads badly (`train --init-from bundled`).

    .venv/bin/python bench/finetune.py                       # 400 crops, 300 steps × 32
    .venv/bin/python bench/finetune.py --clean-share 0.5     # half the crops not struck

The style: common English words in matplotlib's DejaVu faces, dark ink on light paper (the
bundled student reads 99 % of them), struck through by a rule of the ink's colour at mid height
(it reads about a quarter): crossed-out prices, text on ruled forms. Drawn here rather than by
`clipocr synth`, so the figures do not move with the synth styles (tests/test_init_from.py draws
the same). The user's commands, run as a user runs them: a folder of crops with ``labels.tsv``
→ `clipocr prepare --folder` → (no teacher: ``--no-distill``) → `clipocr train --init-from
bundled`. Held-out crops (other words, other seed), struck and clean (is the old style
forgotten?), are read by the bundled and the fine-tuned student.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
import wordfreq
from PIL import Image, ImageDraw, ImageFont

from clipocr.pipeline.preprocess import normalize, resize, to_uint8_tensor
from clipocr.train_student.checkpoint import BUNDLED_STUDENT, load_student

FACES = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
NAMES = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSerif", "DejaVuSansMono", "DejaVuSans-Oblique")


def render(n: int, seed: int, struck_share: float) -> list[tuple[Image.Image, str]]:
    """`n` words; a share `struck_share` of them struck through (tests/test_init_from.py)."""
    words = [w for w in wordfreq.top_n_list("en", 20000) if w.isascii() and w.isalpha()]
    words = [w for w in words if 3 <= len(w) <= 10]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        word = words[int(rng.integers(len(words)))]
        name = NAMES[int(rng.integers(len(NAMES)))]
        font = ImageFont.truetype(os.path.join(FACES, f"{name}.ttf"), int(rng.integers(28, 40)))
        paper = tuple(int(v) for v in rng.integers(170, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        left, top, right, bottom = font.getbbox(word)
        pad = int(rng.integers(3, 10))
        img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
        draw = ImageDraw.Draw(img)
        draw.text((pad - left, pad - top), word, font=font, fill=ink)
        w, h = img.size
        y = h * (0.5 + rng.uniform(-0.12, 0.12))
        if i < round(n * struck_share):
            draw.line([(0, y), (w, y)], fill=ink, width=max(2, round(h / 7)))
        out.append((img, word))
    return out


def write_folder(folder: Path, samples: list[tuple[Image.Image, str]]) -> Path:
    """Crops as PNG files plus labels.tsv: what `clipocr prepare --folder` reads."""
    folder.mkdir(parents=True)
    rows = []
    for i, (img, label) in enumerate(samples):
        img.save(folder / f"{i:05d}.png")
        rows.append(f"{i:05d}.png\t{label}\n")
    (folder / "labels.tsv").write_text("".join(rows))
    return folder


def accuracy(path: Path, samples: list[tuple[Image.Image, str]]) -> float:
    student = load_student(path)
    images = normalize(torch.stack([to_uint8_tensor(resize(img)) for img, _ in samples]))
    read = [text for chunk in images.split(128) for text, _ in student.read(chunk)]
    return 100.0 * float(np.mean([r == lab for r, (_, lab) in zip(read, samples, strict=True)]))


def clipocr(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "clipocr", *map(str, args)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=400, help="training crops")
    ap.add_argument("--clean-share", type=float, default=0.0, help="share not struck through")
    ap.add_argument("--test", type=int, default=300, help="held-out crops of each kind")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=8e-3, help="base lr (× batch/256: 1e-3 at 32)")
    ap.add_argument("--work", type=Path, default=None, help="keep the files here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="clipocr-finetune-"))
    train = write_folder(work / "crops", render(args.train, 1, 1.0 - args.clean_share))
    held = {"struck": render(args.test, 2, 1.0), "clean": render(args.test, 2, 0.0)}
    clipocr("prepare", "--folder", train, "--out", work / "shards")
    tic = time.perf_counter()
    clipocr("train", "--shards", work / "shards", "--no-distill", "--init-from", "bundled",
            "--out", work / "run", "--max-steps", args.steps, "--batch-size", args.batch_size,
            "--lr", args.lr, "--no-augment", "--workers", 0, "--threads", 1)  # fmt: skip
    minutes = (time.perf_counter() - tic) / 60
    tuned = work / "run" / "student.safetensors"
    print(
        f"\nfine-tuned {args.steps} steps × {args.batch_size} on {args.train} crops "
        f"({100 * (1 - args.clean_share):.0f} % struck through) in {minutes:.1f} min (1 thread);"
        f" word accuracy %, {args.test} held-out crops:"
    )
    print("| held-out crops | bundled | fine-tuned |\n|---|---:|---:|")
    for name, samples in held.items():
        before, after = accuracy(BUNDLED_STUDENT, samples), accuracy(tuned, samples)
        print(f"| {name} | {before:.1f} | {after:.1f} |")


if __name__ == "__main__":
    main()
