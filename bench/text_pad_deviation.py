"""The recorded text-side deviation, measured: positions past EOS masked vs aligned with pad tokens.

    .venv/bin/python bench/text_pad_deviation.py                     # demo teacher, mini student
    .venv/bin/python bench/text_pad_deviation.py --student RUN/student.safetensors --batches 8

The official code (wzx99/CLIPOCR) runs CLIP's text tower on ``[SOT, c1..cL, EOT, pad…]`` at the
batch's width and aligns *every* decoder position with it, so positions past EOS are pulled
towards CLIP's features of the padding tokens. clipocr masks them (DESIGN §6: a recorded
deviation, which keeps the cache ragged). On a batch of equal-length words the two agree; on a
mixed-length batch the official variant adds B·(L_max + 1) − Σ(L_i + 1) rows to each text term's
LCL (as further positives and negatives). This script renders a mixed-length batch of words, runs
the teacher's text tower and a student (random-init by default, or a trained one), and prints each
text term both ways and their relative change, ``(aligned − masked) / masked``.

Both variants use the same raw teacher taps (LN_t is applied by the head either way) and the same
head weights; only the rows taking part differ. `--batches` repeats with fresh words to show the
spread. Needs open_clip (the teacher), which is why it lives in bench/.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from clipocr.cache_teacher.teacher import DEFAULT_DEMO_TEACHER, TeacherConfig, load_teacher
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.preprocess import normalize, resize, to_uint8_tensor
from clipocr.pipeline.synth import WordRenderer
from clipocr.train_student import losses
from clipocr.train_student.checkpoint import load_student
from clipocr.train_student.heads import DistillHeads
from clipocr.train_student.model import NUM_STAGES, PRESETS, Student, student_config


def rendered_batch(
    renderer: WordRenderer, charset: Charset, start: int, size: int
) -> tuple[torch.Tensor, list[str]]:
    """`size` rendered words from index `start` on, labels prepared as training prepares them."""
    images, labels, index = [], [], start
    while len(labels) < size:
        img, raw = renderer.sample(index)
        index += 1
        label = charset.prepare_test(raw)
        if label is not None:
            images.append(to_uint8_tensor(resize(img.convert("RGB"))))
            labels.append(label)
    return torch.stack(images), labels


def text_terms(student: Student, heads: DistillHeads, teacher, images, labels) -> dict:
    """Per text term: (masked LCL, pad-aligned LCL, masked rows, aligned rows)."""
    lengths = torch.tensor([len(w) for w in labels])
    width = int(lengths.max()) + 1  # decoder positions c1..cL, EOS, pad… (= tgt_in's width)
    tokens = teacher.tokenizer.encode(labels, width + 1)  # SOT, c1..cL, EOT, pad…
    with torch.inference_mode():
        taps, _ = teacher.text_stages(tokens, lengths)
    with torch.no_grad():
        tgt_in, _ = student.charset.batch_targets(labels)
        out = student(normalize(images), tgt_in)
        valid = torch.arange(width)[None] < (lengths + 1)[:, None]
        every = torch.ones_like(valid)
        result = {}
        for i, (head, tap) in enumerate(zip(heads.text, heads.dec_taps, strict=True), start=1):
            teacher_rows = taps[NUM_STAGES - i - 1][:, 1:].clone()  # drop SOT, as the official
            student_rows = out.dec_stages[tap - 1]
            masked = losses.lcl(*head(student_rows, teacher_rows, valid))[0]
            aligned = losses.lcl(*head(student_rows, teacher_rows, every))[0]
            result[f"aam_txt{i}"] = (float(masked), float(aligned), int(valid.sum()), valid.numel())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-model", default=DEFAULT_DEMO_TEACHER.model)
    parser.add_argument("--teacher-weights", default=DEFAULT_DEMO_TEACHER.pretrained)
    parser.add_argument("--preset", default="mini", choices=sorted(PRESETS))
    parser.add_argument("--student", help="a trained student.safetensors instead of random init")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--style", default="clean")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    teacher = load_teacher(TeacherConfig(model=args.teacher_model, pretrained=args.teacher_weights))
    if args.student:
        student = load_student(args.student)
    else:
        student = Student(student_config(args.preset)).eval()
    student.eval()
    heads = DistillHeads(student.cfg, teacher.dims).eval()
    charset = Charset.from_name(student.cfg.charset)
    renderer = WordRenderer(charset, args.style, seed=args.seed)

    changes: dict[str, list[float]] = {}
    for b in range(args.batches):
        images, labels = rendered_batch(renderer, charset, b * 2 * args.batch_size, args.batch_size)
        lengths = [len(w) for w in labels]
        print(f"batch {b}: {len(labels)} words, lengths {min(lengths)}–{max(lengths)} "
              f"(mean {np.mean(lengths):.1f})")  # fmt: skip
        for name, (masked, aligned, n_masked, n_all) in text_terms(
            student, heads, teacher, images, labels
        ).items():
            change = (aligned - masked) / masked
            changes.setdefault(name, []).append(change)
            print(f"  {name}: masked {masked:.4f} ({n_masked} rows)  pad-aligned {aligned:.4f} "
                  f"({n_all} rows)  change {100 * change:+.2f} %")  # fmt: skip
    print("relative change, pad-aligned vs masked, over", args.batches, "batches:")
    for name, values in changes.items():
        mean, size = statistics.mean(values), statistics.mean(abs(v) for v in values)
        print(f"  {name}: mean {100 * mean:+.2f} %, mean |change| {100 * size:.2f} % "
              f"(min {100 * min(values):+.2f}, max {100 * max(values):+.2f})")  # fmt: skip
    spread = [abs(v) for values in changes.values() for v in values]
    print(f"all text terms: |change| {100 * min(spread):.1f}–{100 * max(spread):.1f} %")


if __name__ == "__main__":
    main()
