"""Synthetic word renderer throughput on one core (`clipocr synth`, DESIGN §3).

Prints, per style: images/s for the whole `render_lmdb` job (render + JPEG + LMDB write), by wall
clock and by CPU time of this process (the fair figure on a shared machine), then the bytes and
encode time per image of JPEG q90 against PNG on the same images. Font discovery is timed apart:
it is paid once per process (cached).

`--before REV` also measures the renderer as it was at git revision REV (its `clipocr` tree is
exported to a temporary folder and timed in a subprocess, alternating with the current tree's,
`--rounds` times each; the best round of each is kept), so old and new are compared in one run
under the same load:

    .venv/bin/python bench/bench_synth.py --num 3000
    .venv/bin/python bench/bench_synth.py --num 2000 --before c44d6a1   # old vs new renderer
    .venv/bin/python bench/bench_synth.py --num 60 --sheets /tmp   # also draw PNGs to look at

`--sheets DIR` writes ``fonts_<charset>.png`` (every kept face, the check by eye that fonts.py
asks for) and ``synth_<style>.png`` (a grid of samples with their labels).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.synth import STYLES, WordRenderer, render_lmdb
from clipocr.pipeline.synth.fonts import discover_faces


def encode_costs(images: list[Image.Image]) -> dict[str, tuple[float, float]]:
    """Mean (bytes, microseconds) per image for each candidate storage format."""
    out = {}
    for name, kwargs in {
        "jpeg q90": {"format": "JPEG", "quality": 90},
        "png": {"format": "PNG"},
    }.items():
        size, start = 0, time.process_time()
        for img in images:
            buf = io.BytesIO()
            img.save(buf, **kwargs)
            size += buf.tell()
        out[name] = (size / len(images), (time.process_time() - start) / len(images) * 1e6)
    return out


def font_sheet(charset: Charset, path: Path) -> int:
    faces = discover_faces(charset.chars)
    row, col_w, cols = 34, 640, 2
    sheet = Image.new("RGB", (col_w * cols, row * ((len(faces) + cols - 1) // cols)), "white")
    draw = ImageDraw.Draw(sheet)
    small = ImageFont.load_default()
    for i, face in enumerate(faces):
        x, y = (i % cols) * col_w, (i // cols) * row
        draw.text((x + 2, y + 4), face.name[:36], fill=(200, 0, 0), font=small)
        draw.text((x + 240, y + 2), "Quick Brown 0123456789 fox", fill=0, font=face.load(24))
    sheet.save(path)
    return len(faces)


def sample_sheet(renderer: WordRenderer, n: int, path: Path) -> None:
    cols, cell_w, cell_h = 3, 270, 84
    sheet = Image.new("RGB", (cols * cell_w, cell_h * ((n + cols - 1) // cols)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        img, label = renderer.sample(i)
        img.thumbnail((cell_w - 10, 64))
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        sheet.paste(img, (x + 5, y + 2))
        draw.text((x + 5, y + 68), label, fill=(200, 0, 0))
    sheet.save(path)


WARMUP = 400  # samples rendered before timing


def throughput(num: int, charset: Charset, style: str) -> dict[str, float]:
    """images/s of a whole `render_lmdb` job, by wall clock and per CPU-second of this process,
    after a warm-up (font discovery, photo loading and most glyph caches are paid once)."""
    warm = WordRenderer(charset, style, seed=12345)
    for i in range(WARMUP):
        warm.sample(i)
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        meta = render_lmdb(Path(tmp) / "db", num, 0, charset, style, progress=False)
        cpu = time.process_time() - cpu
    return {"wall": meta.images_per_s, "cpu": num / cpu}


def compare(args: argparse.Namespace) -> None:
    """Old (git `args.before`) and current renderer, alternating, in subprocesses alike."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as old_tree:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", args.before, "clipocr"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", old_tree], input=archive, check=True)
        best: dict[tuple[str, str], dict[str, float]] = {}
        for _ in range(args.rounds):
            for name, tree in (("before", old_tree), ("now", str(root))):
                env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
                cmd = [sys.executable, __file__, "--num", str(args.num), "--charset",
                       args.charset, "--styles", *args.styles, "--json"]  # fmt: skip
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
                for style, rate in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    prev = best.get((name, style))
                    if prev is None or rate["cpu"] > prev["cpu"]:
                        best[(name, style)] = rate
    print(f"renderer before ({args.before}) vs now, {args.num} images per style, best of "
          f"{args.rounds} alternating rounds, images/s per CPU-second (wall):")  # fmt: skip
    for style in args.styles:
        b, n = best[("before", style)], best[("now", style)]
        print(
            f"[{style}] before {b['cpu']:.0f} ({b['wall']:.0f}), now {n['cpu']:.0f} "
            f"({n['wall']:.0f}): {n['cpu'] / b['cpu']:.2f}x"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=3000, help="images per style")
    ap.add_argument("--charset", default="36")
    ap.add_argument("--styles", nargs="+", default=sorted(STYLES))
    ap.add_argument("--sheets", type=Path, help="also write contact sheets (PNG) here")
    ap.add_argument("--before", help="git revision whose renderer to time beside this one")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds with --before")
    ap.add_argument("--json", action="store_true", help="print only {style: rates} as JSON")
    args = ap.parse_args()
    if args.before:
        compare(args)
        return
    if args.json:
        charset = Charset.from_name(args.charset)
        rates = {style: throughput(args.num, charset, style) for style in args.styles}
        print(json.dumps(rates))
        return
    charset = Charset.from_name(args.charset)

    start = time.perf_counter()
    faces = discover_faces(charset.chars)
    families = len({f.family for f in faces})
    print(
        f"font discovery: {len(faces)} faces, {families} families, "
        f"{time.perf_counter() - start:.1f} s (once per process)"
    )
    if args.sheets:
        args.sheets.mkdir(parents=True, exist_ok=True)
        font_sheet(charset, args.sheets / f"fonts_{charset.name}.png")

    for style in args.styles:
        with tempfile.TemporaryDirectory() as tmp:
            cpu = time.process_time()
            meta = render_lmdb(Path(tmp) / "db", args.num, 0, charset, style, progress=False)
            cpu = time.process_time() - cpu
            mdb = (Path(tmp) / "db" / "data.mdb").stat().st_size
        renderer = WordRenderer(charset, style, seed=1)
        images = [renderer.sample(i)[0] for i in range(min(300, args.num))]
        mean_w = sum(im.width for im in images) / len(images)
        mean_h = sum(im.height for im in images) / len(images)
        print(
            f"[{style}] {args.num} images: {meta.images_per_s:.0f} img/s wall, "
            f"{args.num / cpu:.0f} img/s per CPU-second; mean {mean_w:.0f}x{mean_h:.0f} px, "
            f"LMDB {mdb / args.num / 1024:.1f} KiB/image (file incl. slack)"
        )
        for name, (size, us) in encode_costs(images).items():
            print(f"[{style}]   {name:8s}: {size / 1024:5.1f} KiB/image, encode {us:5.0f} us/image")
        if args.sheets:
            sample_sheet(renderer, 60, args.sheets / f"synth_{style}.png")
    if args.sheets:
        print(f"sheets written to {args.sheets}")


if __name__ == "__main__":
    main()
