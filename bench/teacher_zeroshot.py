"""Issue 20 item 2: how well a teacher reads real crops on its own (zero-shot, no student).

    nice .venv/bin/python bench/teacher_zeroshot.py \
        --teacher bundled=clipocr/assets/teacher --teacher new=~/teacher3/teacher \
        --data ~/ref2/data/test/IIIT5k_train_2000 --data ~/ref2/data/test/IC15_train_4468

Reading = image → nearest label embedding (cosine) over a closed lexicon: the distinct labels
of the set itself (chance 1/N, N printed). That is CLIP's own zero-shot protocol and the one
the teacher was trained for; it says whether the targets a student is pulled toward carry the
word on real crops, before any student exists. Both teachers read the same crops and the same
lexicon in one run, so their ratio is what to compare.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clipocr.cache_teacher.pretrain_data import load_words
from clipocr.cache_teacher.teacher import Teacher, TeacherConfig, load_teacher
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.preprocess import normalize


@dataclass
class ZeroShot:
    """One teacher on one set: top-1 over the set's own distinct labels."""

    teacher: str
    data: str
    samples: int
    lexicon: int
    top1: float  # fraction of crops whose nearest label is their own
    top5: float


@torch.inference_mode()
def read_set(teacher: Teacher, images: torch.Tensor, labels: list[str]) -> tuple[float, float, int]:
    """Top-1/top-5 image→label accuracy over the distinct labels of the set (+ lexicon size)."""
    lexicon = sorted(set(labels))
    index = {w: i for i, w in enumerate(lexicon)}
    model = teacher.model
    txt = []
    for start in range(0, len(lexicon), 256):
        tokens = teacher.tokenizer.encode(lexicon[start : start + 256], teacher.context_length)
        txt.append(model.encode_text(tokens, normalize=True))
    txt = torch.cat(txt)
    img = []
    for start in range(0, len(images), 256):
        x = normalize(images[start : start + 256], teacher.mean, teacher.std)
        img.append(F.normalize(model.encode_image(x), dim=-1))
    sims = torch.cat(img) @ txt.T
    truth = torch.tensor([index[w] for w in labels])
    top5 = sims.topk(min(5, len(lexicon)), dim=1).indices
    top1 = (top5[:, 0] == truth).float().mean().item()
    in5 = (top5 == truth[:, None]).any(dim=1).float().mean().item()
    return top1, in5, len(lexicon)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--teacher", action="append", required=True,
                        help="NAME=DIR holding teacher.json + teacher.safetensors")  # fmt: skip
    parser.add_argument("--data", action="append", type=Path, required=True, help="STR LMDB")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[ZeroShot] = []
    sets = {}
    for path in args.data:
        images, labels, _ = load_words(path.expanduser(), Charset.from_name("36"))
        sets[path] = (images, labels)
    for spec in args.teacher:
        name, _, folder = spec.partition("=")
        folder = Path(folder).expanduser()
        cfg = TeacherConfig(model=str(folder / "teacher.json"),
                            pretrained=str(folder / "teacher.safetensors"))  # fmt: skip
        teacher = load_teacher(cfg)
        for path, (images, labels) in sets.items():
            top1, top5, n = read_set(teacher, images, labels)
            rows.append(ZeroShot(name, path.name, len(labels), n, top1, top5))
            print(f"{name:<10} {path.name:<22} n={len(labels):<5} lexicon={n:<5} "
                  f"top1 {100 * top1:5.1f} %  top5 {100 * top5:5.1f} %", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
