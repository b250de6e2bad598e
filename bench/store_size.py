"""Teacher-store size per sample and the loss change each codec causes (issue 14 item 5).

    .venv/bin/python bench/store_size.py                       # both teachers, both repetitions
    .venv/bin/python bench/store_size.py --num 4096 --per-word 100 --student RUN/student.safetensors
    .venv/bin/python bench/store_size.py --compressors         # Blosc settings: MB/s and ratio

Words are rendered twice: **MJ-like** — a closed lexicon of ``num / per_word`` words drawn
uniformly, so each label repeats ≈ ``per_word`` times as in MJSynth (≈ 9 M images of ≈ 90 k
words, ≈ 100 per word) — and **demo-like** — the demo's open sampler (wordfreq's 50 k list plus
random strings and numbers: labels barely repeat). Each codec writes the store the real way (the
text table filled first by `write_text_table`, then shard groups of image taps and references,
through `TeacherStoreWriter`), and the ``ragged`` layout (text rows per sample, format 1) is
written beside it for comparison. Bytes/sample = every file of the store ÷ samples.

Two teachers, for two different questions:

* **ViT-B/16 shapes** (the null teacher: 17×768 image taps ×3, text 512, embedding 512) for the
  bytes the goal is about (≤ 40 KB/sample). Its values are seeded Gaussian noise in the storage
  form, so they are *synthetic*: float16 noise compresses less than a trained CLIP's features
  (no structure to find), int codecs' entropy is that of a Gaussian — treat lossless figures as
  an upper bound and the lossy ones as indicative.
* **the bundled demo teacher** (a real, trained character-level CLIP; small towers: 33×128
  image taps, text 128, embedding 256) for ΔLCL: each codec's store is read back through the
  real reader and `collate`, batched in store order with the rendered images, and the
  distillation terms of clipocr's heads (`DistillHeads`, LCL) are computed against a student's
  outputs on those images (random-init ``mini`` preset, seeded, or ``--student``). ΔLCL = |loss
  with the codec's targets − loss with the lossless store's| ÷ the latter, for the summed
  distillation loss and the worst single term, mean over ``--batches`` batches of ``--batch``.

``--compressors`` instead times Blosc settings (zstd levels, lz4, byte vs bit shuffle) on both
teachers' float16 features: encode/decode MB/s in one thread and the compression ratio — the
measurement behind `Codec.compressor`'s default.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import dir_bytes, load_line

from clipocr.cache_teacher.label_table import write_text_table
from clipocr.cache_teacher.null_teacher import load_null_teacher
from clipocr.cache_teacher.teacher import (
    DEFAULT_DEMO_TEACHER,
    Teacher,
    TeacherConfig,
    load_teacher,
    store_spec,
)
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.preprocess import normalize, resize, to_uint8_tensor
from clipocr.pipeline.synth import WordRenderer
from clipocr.pipeline.teacher_store import TeacherStore, TeacherStoreWriter, parse_codec
from clipocr.train_student.checkpoint import load_student
from clipocr.train_student.dataset import collate
from clipocr.train_student.heads import DistillHeads
from clipocr.train_student.model import Student, student_config

CODECS = "zstd,bitround-5,bitround-4,bitround-3,int8-channel,int7-channel,int6-channel"
SHARD = 512  # samples per shard group


def render(num: int, per_word: int | None, seed: int) -> tuple[torch.Tensor, list[str]]:
    """`num` rendered words: a closed lexicon of num/per_word words (MJ-like), or the demo's
    open sampler (`per_word` None)."""
    charset = Charset.from_name("36")
    renderer = WordRenderer(charset, "clean", seed=seed)
    lexicon: list[str] = []
    if per_word:
        k, i = max(num // per_word, 1), 0
        while len(lexicon) < k:
            word = charset.prepare_test(renderer.words.sample(renderer.rng(10**6 + i)))
            i += 1
            if word and word not in lexicon:
                lexicon.append(word)
    images, labels, index = [], [], 0
    while len(labels) < num:
        rng = renderer.rng(index)
        index += 1
        if per_word:
            text = lexicon[int(rng.integers(len(lexicon)))]
            img = renderer.render(text, rng)
        else:
            img, text = renderer.sample(index)
        label = charset.prepare_test(text)
        if label:
            images.append(to_uint8_tensor(resize(img.convert("RGB"))))
            labels.append(label)
    return torch.stack(images), labels


def write_store(
    root: Path, teacher: Teacher, codec: str, layout: str, images: torch.Tensor, labels: list[str]
) -> tuple[int, dict[str, int]]:
    """The store of `images`/`labels` with `codec`; its bytes and bytes per part."""
    writer = TeacherStoreWriter(root, store_spec(teacher, codec, layout), encode_threads=1)
    half = parse_codec(codec).lossless
    if layout == "table":
        write_text_table(teacher, writer, sorted(set(labels)))
    for s0 in range(0, len(labels), SHARD):
        name = f"shard-{s0 // SHARD:06d}"
        keys = [f"{name}/{i:06d}" for i in range(s0, min(s0 + SHARD, len(labels)))]
        labs = labels[s0 : s0 + SHARD]
        with writer.open_shard(name, expected=len(keys), labels=dict(zip(keys, labs))) as g:
            for j in range(0, len(keys), 128):
                sl = slice(s0 + j, s0 + min(j + 128, len(keys)))
                feats = teacher.features(images[sl], labels[sl], text=layout != "table")
                arrays = {
                    k: v.numpy() if k == "text_lengths" else (v.half() if half else v).numpy()
                    for k, v in feats.items()
                }  # fmt: skip
                g.append(keys[j : j + 128], arrays)
            g.commit()
    parts = {"table": dir_bytes(root / "__text_table") if layout == "table" else 0}
    return dir_bytes(root), parts


def distill_terms(heads: DistillHeads, out, batch: dict) -> dict[str, float]:
    names = ("image_s1", "image_s2", "image_s3", "text_s1", "text_s2", "text_s3", "text_emb")
    targets = {k: batch[k].float() for k in names} | {"text_mask": batch["text_mask"]}
    with torch.no_grad():
        return {k: float(v) for k, v in heads(out, targets).items()}


def loss_changes(
    stores: dict[str, Path], images: torch.Tensor, labels: list[str], args: argparse.Namespace,
    dims: dict[str, int],
) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Codec → (mean |Δ summed loss| / loss, mean worst |Δ term| / term) vs ``zstd``."""
    torch.manual_seed(args.seed)
    student = load_student(args.student) if args.student else Student(student_config("mini"))
    student.eval()
    heads = DistillHeads(student.cfg, dims).eval()
    charset = Charset.from_name(student.cfg.charset)
    per_codec: dict[str, list[dict[str, float]]] = {}
    for codec, root in stores.items():
        store = TeacherStore(root)
        samples = [
            {"key": k, "label": labels[i], "image": images[i], "feats": f}
            for i, (k, f) in enumerate(kf for n in sorted(store.shards())
                                       for kf in store.iter_shard(n))
        ][: args.batches * args.batch]  # fmt: skip
        per_codec[codec] = []
        for start in range(0, len(samples), args.batch):
            batch = collate(samples[start : start + args.batch], charset)
            with torch.no_grad():
                out = student(normalize(batch["images"]), batch["tgt_in"])
            per_codec[codec].append(distill_terms(heads, out, batch))
    ref = per_codec["zstd"]
    out = {}
    for codec, terms in per_codec.items():
        total = [abs(sum(t.values()) - sum(r.values())) / sum(r.values())
                 for t, r in zip(terms, ref, strict=True)]  # fmt: skip
        worst = [max(abs(t[k] - r[k]) / abs(r[k]) for k in r) for t, r in zip(terms, ref)]
        out[codec] = (float(np.mean(total)), float(np.mean(worst)))
    return out


def sizes(args: argparse.Namespace, teacher: Teacher, name: str, regimes: dict, tmp: Path,
          with_loss: bool, tag: str) -> None:  # fmt: skip
    """Print bytes/sample per codec and layout (and ΔLCL) for each label regime."""
    for regime, (images, labels) in regimes.items():
        n, distinct = len(labels), len(set(labels))
        print(f"\n{name}, {regime}: {n} samples, {distinct} distinct labels "
              f"({n / distinct:.1f} images per label); {load_line()}")  # fmt: skip
        stores = {}
        for codec in args.codecs.split(","):
            line = f"  {codec:13s}"
            for layout in ("table", "ragged"):
                root = tmp / f"{tag}-{regime}-{codec}-{layout}"
                total, parts = write_store(root, teacher, codec, layout, images, labels)
                line += f"  {layout} {total / n / 1e3:6.2f} KB/sample"
                if layout == "table":
                    stores[codec] = root
                    line += f" (text table {parts['table'] / n / 1e3:5.2f})"
            print(line, flush=True)
        if with_loss:
            for codec, (total, worst) in loss_changes(
                stores, images, labels, args, teacher.dims
            ).items():
                print(f"  ΔLCL {codec:13s} summed {total:.2e}, worst term {worst:.2e}")


def compressors(teachers: dict[str, Teacher], images: torch.Tensor, labels: list[str]) -> None:
    """Blosc settings on float16 features: MB/s (one thread) and ratio."""
    from numcodecs import Blosc

    Blosc.use_threads = False
    settings = [("zstd", 1, 1), ("zstd", 3, 1), ("zstd", 5, 1), ("zstd", 1, 2), ("zstd", 3, 2),
                ("lz4", 5, 1), ("lz4", 5, 2), ("lz4hc", 9, 2)]  # fmt: skip
    print(f"compressors  {load_line()}; 256 KiB blocks, chunks of 64 samples, 3 repetitions")
    for name, teacher in teachers.items():
        with torch.inference_mode():
            f = teacher.features(images[:256], labels[:256])
        x = np.concatenate([f[f"image_s{i}"].half().numpy() for i in (1, 2, 3)])
        pieces = [x[j : j + 64] for j in range(0, len(x), 64)]
        for cname, level, shuffle in settings:
            codec = Blosc(cname=cname, clevel=level, shuffle=shuffle, blocksize=1 << 18)
            enc = dec = 0.0
            for _ in range(3):
                tic = time.perf_counter()
                out = [codec.encode(p) for p in pieces]
                enc += time.perf_counter() - tic
                tic = time.perf_counter()
                for o in out:
                    codec.decode(o)
                dec += time.perf_counter() - tic
            ratio = x.nbytes / sum(len(o) for o in out)
            mbs = 3 * x.nbytes / 1e6
            print(f"  {name:10s} image taps {cname:5s} level {level} "
                  f"{'byte' if shuffle == 1 else 'bit '}shuffle: ratio {ratio:.3f}, encode "
                  f"{mbs / enc:6.0f} MB/s, decode {mbs / dec:6.0f} MB/s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2048)
    parser.add_argument("--per-word", type=int, default=100, help="MJ-like images per label")
    parser.add_argument("--codecs", default=CODECS)
    parser.add_argument("--student", help="a trained student.safetensors (default: random mini)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compressors", action="store_true", help="only the Blosc table")
    parser.add_argument("--skip-null", action="store_true", help="demo teacher only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tic = time.perf_counter()
    regimes = {"MJ-like": render(args.num, args.per_word, args.seed),
               "demo-like": render(args.num, None, args.seed)}  # fmt: skip
    print(f"data         {args.num} words rendered per regime in {time.perf_counter() - tic:.0f} s")
    demo = load_teacher(DEFAULT_DEMO_TEACHER)
    null = None if args.skip_null else load_null_teacher(TeacherConfig(model="ViT-B-16"))
    if args.compressors:
        images, labels = regimes["demo-like"]
        compressors({"demo": demo} | ({"null B/16": null} if null else {}), images, labels)
        return
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(False):
        if null is not None:
            sizes(args, null, "ViT-B/16 shapes (null teacher, synthetic)", regimes, Path(tmp),
                  with_loss=False, tag="null")  # fmt: skip
        sizes(args, demo, "demo teacher (trained, small)", regimes, Path(tmp), with_loss=True,
              tag="demo")  # fmt: skip


if __name__ == "__main__":
    main()
