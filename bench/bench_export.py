"""`clipocr export` vs PyTorch: the same strings on 1,000 crops, and CPU speed side by side.

    .venv/bin/python bench/bench_export.py                       # exports the bundled student
    .venv/bin/python bench/bench_export.py --onnx student.onnx   # reuse an export

Crops: `--rendered` words from `clipocr synth`'s renderer (clean style, seed 103: never trained
on) and `--real` real training crops from /work/shared/data/real-train (IIIT5k and IC15, half
each, drawn with `--seed`), decoded as `clipocr read` decodes them. Agreement: the fraction of
identical strings and the largest confidence difference, ONNX Runtime vs `Student.generate`
(issue 21 asks ≥ 99.8 % and ≤ 1e-4). Speed, **one thread for every backend** (torch
`set_num_threads(1)`, ONNX Runtime intra- and inter-op 1): ms/image at batch 1 over `--b1`
crops, and images/s at batch `--batch` over the crops cycled to four full batches, best of
`--repeats`. Backends: PyTorch `generate` (what `clipocr read` runs: K/V cache, stops when every
word has ended), the exported graph run eagerly by PyTorch (fixed max_len + 1 steps), ONNX
Runtime on the .onnx file, and TorchScript (`--torchscript`).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from clipocr.evaluate.export import export_student
from clipocr.evaluate.graph_backend import onnx_backend, torchscript_backend
from clipocr.evaluate.read import decode_bytes
from clipocr.evaluate.reader import _reading
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.preprocess import normalize
from clipocr.pipeline.synth import iter_samples
from clipocr.train_student.checkpoint import BUNDLED_STUDENT, load_student
from clipocr.train_student.export_graph import GreedyGraph

REAL = Path("/work/shared/data/real-train")
Run = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def crops(rendered: int, real: int, seed: int) -> np.ndarray:
    """uint8 ``(N, 3, 32, 128)``: rendered words, then real crops (half IIIT5k, half IC15)."""
    pixels = [
        decode_bytes(jpeg)[0] for jpeg, _ in iter_samples(rendered, 103, Charset.from_name("36"))
    ]
    rng = np.random.default_rng(seed)
    for folder, n in (("IIIT5k_train_2000", real // 2), ("IC15_train_4468", real - real // 2)):
        rows = (REAL / folder / "labels.tsv").read_text().splitlines()
        for i in rng.choice(len(rows), size=n, replace=False):
            path = REAL / folder / rows[i].split("\t")[0]
            pixels.append(decode_bytes(path.read_bytes())[0])
    assert all(p is not None for p in pixels), "a crop did not decode"
    return np.stack(pixels)


def read_all(run: Run, pixels: np.ndarray, batch: int, charset: Charset) -> list:
    out = []
    for start in range(0, len(pixels), batch):
        ids, probs = run(pixels[start : start + batch])
        out += [_reading("", i, p, charset) for i, p in zip(ids, probs, strict=True)]
    return out


def speed(run: Run, pixels: np.ndarray, b1: int, batch: int, repeats: int) -> tuple[float, float]:
    """(ms/image at batch 1, images/s at `batch`), best of `repeats` each."""
    run(pixels[:1])  # warm-up (allocations, ORT's first-run planning)
    run(pixels[:batch])
    per_image = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(b1):
            run(pixels[i : i + 1])
        per_image.append((time.perf_counter() - start) / b1 * 1e3)
    big = np.concatenate([pixels] * (4 * batch // len(pixels) + 1))[: 4 * batch]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for j in range(0, len(big), batch):
            run(big[j : j + batch])
        rates.append(len(big) / (time.perf_counter() - start))
    return min(per_image), max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_STUDENT)
    parser.add_argument("--onnx", type=Path, help="an existing export of --checkpoint")
    parser.add_argument("--torchscript", action="store_true", help="time TorchScript too")
    parser.add_argument("--rendered", type=int, default=500)
    parser.add_argument("--real", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--b1", type=int, default=100, help="crops timed at batch 1")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(1)
    student = load_student(args.checkpoint)
    charset = student.charset
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
    onnx_path = args.onnx
    if onnx_path is None:
        onnx_path = tmp / "student.onnx"
        made = export_student(student, onnx_path, "onnx")
        print(f"exported {onnx_path} ({made.bytes / 1e6:.1f} MB) in {made.seconds:.0f} s")
    pixels = crops(args.rendered, args.real, args.seed)

    def torch_generate(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, probs = student.generate(normalize(torch.from_numpy(batch)))
        return ids.numpy(), probs.numpy()

    graph = GreedyGraph(student)

    def torch_graph(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            ids, probs = graph(torch.from_numpy(batch))
        return ids.numpy(), probs.numpy()

    backends: dict[str, Run] = {
        "PyTorch generate (early stop)": torch_generate,
        "PyTorch, exported graph (fixed)": torch_graph,
        "ONNX Runtime": onnx_backend(onnx_path, "cpu", threads=1)[0],
    }
    if args.torchscript:
        ts = tmp / "student.pt"
        export_student(student, ts, "torchscript")
        backends["TorchScript"] = torchscript_backend(ts, "cpu")[0]

    want = read_all(torch_generate, pixels, args.batch, charset)
    got = read_all(backends["ONNX Runtime"], pixels, args.batch, charset)
    same = sum(a.text == b.text for a, b in zip(want, got, strict=True))
    conf = max(abs(a.confidence - b.confidence) for a, b in zip(want, got, strict=True))
    chars = max(
        (abs(x - y) for a, b in zip(want, got, strict=True)
         for x, y in zip(a.char_confidences, b.char_confidences)),
        default=0.0,
    )  # fmt: skip
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
        f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, one thread each"
    )
    n = len(pixels)
    print(
        f"agreement on {n} crops ({args.rendered} rendered + {args.real} real): identical "
        f"strings {same}/{n} = {100 * same / n:.2f} %, max |confidence diff| {conf:.2e}, "
        f"max |char confidence diff| {chars:.2e}"
    )
    print(f"{'backend':<34s}{'ms/image (batch 1)':>20s}{f'images/s (batch {args.batch})':>24s}")
    for name, run in backends.items():
        ms, rate = speed(run, pixels, args.b1, args.batch, args.repeats)
        print(f"{name:<34s}{ms:>20.2f}{rate:>24.1f}", flush=True)


if __name__ == "__main__":
    main()
