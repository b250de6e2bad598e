"""The decoder layer kinds' cost at a preset's sizes: training step and greedy reading.

    OMP_NUM_THREADS=1 .venv/bin/python bench/decoder_layers.py                 # the demo's sizes
    OMP_NUM_THREADS=1 .venv/bin/python bench/decoder_layers.py --preset small --rounds 1

Why: the demo keeps the standard layer while the paper's presets use the official one (issue 22);
this shows whether speed is a reason. Decoder only (a random encoder memory, so the encoder's cost
does not hide the difference): `Student.decode` + CE + an AdamW step on a batch of 32 words of
2–12 characters, then `Student.generate` on 100 images with a head that never emits EOS (all
``max_len + 1`` steps). Times are the process's CPU time per call (steadier than wall time on a
shared machine), the kinds interleaved for `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import time

import torch

from clipocr.pipeline.charset import Charset
from clipocr.train_student.model import Student, student_config
from clipocr.train_student.student_config import DEC_LAYERS

WORDS = ["hello", "world", "distillation", "ab", "clip", "ocr", "text", "reading"] * 4


def measure(preset: str, kind: str, steps: int, reads: int) -> tuple[float, float]:
    """(seconds per training step, seconds per greedy read of 100 images)."""
    torch.manual_seed(0)
    model = Student(student_config(preset, dec_layer=kind))
    cs: Charset = model.charset
    tgt_in, tgt_out = cs.batch_targets(WORDS)
    memory = torch.randn(len(WORDS), model.cfg.num_tokens, model.cfg.enc_dim)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def step() -> None:
        logits = model.head(model.decode(memory, tgt_in)[-1])
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), tgt_out.flatten(), ignore_index=cs.pad_id
        )
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    start = time.process_time()
    for _ in range(steps):
        step()
    train = (time.process_time() - start) / steps

    model.eval()
    images = torch.zeros(100, 3, 32, 128)
    read_memory = torch.randn(100, model.cfg.num_tokens, model.cfg.enc_dim)
    model.encode = lambda x: ([], read_memory[: len(x)])  # type: ignore[method-assign]
    with torch.no_grad():
        model.head.bias[cs.encode("k")[0]] = 50.0  # never EOS: every read runs all steps
    model.generate(images[:10])
    start = time.process_time()
    for _ in range(reads):
        model.generate(images)
    return train, (time.process_time() - start) / reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--reads", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for _ in range(args.rounds):
        for kind in DEC_LAYERS:
            train, read = measure(args.preset, kind, args.steps, args.reads)
            print(
                f"{args.preset} {kind:10s} train step (batch 32): {train * 1e3:7.1f} ms   "
                f"greedy read (batch 100): {read * 1e3:7.1f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
