"""Inference speed of a student: ms/image at batch 1 and images/s at a large batch.

    .venv/bin/python bench/bench_inference.py                      # ViT-S, CPU, 2 threads
    .venv/bin/python bench/bench_inference.py --device cuda         # on a GPU

Greedy autoregressive decoding stops once every image has emitted EOS, so speed depends on how
many steps run, and a randomly initialised model decides that arbitrarily. The script therefore
pins the number of steps by biasing the classifier's EOS logit: "1 step" (EOS at once: encoder +
one decoder step, the lower bound) and "26 steps" (EOS never: max_len + 1, the upper bound), and
interpolates linearly to 7 steps, a typical benchmark word (mean length ≈ 6, plus EOS). Paper
anchor: CLIP-OCR 20.9 ms/img, PARSeq 11.5 ms/img at batch 1 on an RTX 3090.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from clipocr.evaluate.benchmark import measure_speed
from clipocr.evaluate.results import Speed
from clipocr.train_student.model import PRESETS, Student, student_config

TYPICAL_STEPS = 7


def timed(model: Student, images: torch.Tensor, batch: int, eos_bias: float, args) -> Speed:
    with torch.no_grad():
        model.head.bias[model.charset.eos_id] = eos_bias
    return measure_speed(
        model, images, batch, warmup=args.warmup, repeats_b1=args.repeats_b1,
        repeats_batch=args.repeats_batch,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats-b1", type=int, default=20)
    parser.add_argument("--repeats-batch", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Student(student_config(args.preset)).to(args.device).eval()
    steps = model.cfg.max_len + 1
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 128), dtype=torch.uint8)
    images = images.to(args.device)
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {args.threads} threads"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"student {args.preset}: {model.num_params() / 1e6:.1f} M params, fp32, on {where} "
        f"({os.cpu_count()} cores, load average {load:.1f} at start)"
    )
    one = timed(model, images, args.batch_size, 1e4, args)
    full = timed(model, images, args.batch_size, -1e4, args)

    def at(steps_run: int, a: float, b: float) -> float:
        return a + (b - a) * (steps_run - 1) / (steps - 1)

    # Throughput interpolates in time per image, not in images/s.
    typ_ms = at(TYPICAL_STEPS, one.ms_per_image, full.ms_per_image)
    typ_s = at(TYPICAL_STEPS, 1 / one.images_per_s, 1 / full.images_per_s)
    print(
        f"{'decoding':<32s}{'ms/image (batch 1)':>20s}{f'images/s (batch {args.batch_size})':>24s}"
    )
    print(f"{'1 step (EOS at once)':<32s}{one.ms_per_image:>20.2f}{one.images_per_s:>24.1f}")
    print(
        f"{f'{steps} steps (EOS never)':<32s}{full.ms_per_image:>20.2f}{full.images_per_s:>24.1f}"
    )
    print(f"{f'{TYPICAL_STEPS} steps (interpolated)':<32s}{typ_ms:>20.2f}{1 / typ_s:>24.1f}")


if __name__ == "__main__":
    main()
