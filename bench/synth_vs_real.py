"""Draw docs/synth_vs_real.png: rendered words (clean, hard) beside real IIIT5k and IC15 crops.

A look at what the renderer makes next to what a student must read; the renderer is judged by
transfer (bench/synth_transfer.sh), this picture only shows where the two still differ. Real
crops are drawn at random from the training crops the colour table was measured on (the
held-back evaluation crops are never shown or used). Every cell is scaled to the same height,
keeping its aspect.

    .venv/bin/python bench/synth_vs_real.py --real-data ../shared/data/real-train
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw
from synth_colours import SETS, held_back

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.sources import ImageFolderSource
from clipocr.pipeline.synth import WordRenderer

CELL_W, CELL_H, IMG_H, PAD = 230, 62, 44, 6
OUT = Path(__file__).resolve().parents[1] / "docs" / "synth_vs_real.png"


def real_crops(root: Path, name: str, n: int, seed: int) -> list[tuple[Image.Image, str]]:
    source = ImageFolderSource(root / name)
    skip = held_back(source.entries)
    kept = [(rel, label) for _, rel, label in source.entries if rel not in skip]
    picked = random.Random(seed).sample(kept, n)
    return [(Image.open(source.root / rel).convert("RGB"), label) for rel, label in picked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-data", type=Path, default=Path("../shared/data/real-train"))
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    cs = Charset.from_name("36")
    columns: list[tuple[str, list[tuple[Image.Image, str]]]] = []
    for k, style in enumerate(("clean", "hard")):
        renderer = WordRenderer(cs, style, seed=args.seed + k)
        columns.append((f"rendered: {style}", [renderer.sample(i) for i in range(args.rows)]))
    for name in SETS:
        columns.append((f"real: {name}", real_crops(args.real_data, name, args.rows, args.seed)))
    sheet = Image.new("RGB", (CELL_W * len(columns), 22 + CELL_H * args.rows), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (title, cells) in enumerate(columns):
        x = c * CELL_W + PAD
        draw.text((x, 5), title, fill=(0, 0, 0))
        for r, (img, label) in enumerate(cells):
            w = max(1, round(img.width * IMG_H / img.height))
            img = img.resize((min(w, CELL_W - 2 * PAD), IMG_H), Image.BICUBIC)
            y = 22 + r * CELL_H
            sheet.paste(img, (x, y))
            draw.text((x, y + IMG_H + 1), label, fill=(180, 0, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours: a third of the bytes of the RGB file, no visible difference at this size.
    sheet.quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
