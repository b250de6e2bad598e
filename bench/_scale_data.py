"""Inputs of `bench/scale.py`: tar shards, stores of ViT-B/16-shaped synthetic features, tables,
and the memory figures of a process (Linux ``/proc``)."""

from __future__ import annotations

import io
import random
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.lmdb_io import LmdbWriter
from clipocr.pipeline.shards import prepare_shards, shard_paths
from clipocr.pipeline.teacher_store import (
    STAGES_IMAGE,
    StoreSpec,
    TeacherStoreWriter,
    open_table_part,
)

# ViT-B/16 at 32×128 (DESIGN §8): 17 image tokens of 768, text 512, embedding 512, context 27.
VIT_B16 = {"image_tokens": 17, "image": 768, "text": 512, "emb": 512}
POSITIONS = 26
TINY = {"image_tokens": 1, "image": 8, "text": 8, "emb": 8}
CS = Charset.from_name("36")


def lexicon(n: int, seed: int = 0) -> list[str]:
    """`n` distinct words of 3–12 symbols of the 36-symbol charset (mean ≈ 7.5, near MJ's)."""
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choices(alphabet, k=rng.randint(3, 12))))
    return sorted(words)


def _jpeg() -> bytes:
    img = Image.new("RGB", (100, 32), (255, 255, 255))
    ImageDraw.Draw(img).text((4, 8), "word", fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def make_shards(root: Path, labels: list[str], shard_size: int) -> Path:
    """Tar shards prepared the real way (LMDB → `prepare_shards`), one small JPEG each."""
    image = _jpeg()
    with LmdbWriter(root / "lmdb") as writer:
        for label in labels:
            writer.add(image, label)
    prepare_shards([root / "lmdb"], root / "shards", CS, shard_size, progress=False)
    return root / "shards"


def spec(dims: dict, layout: str = "table") -> StoreSpec:
    return StoreSpec(teacher={"model": "synthetic"}, preprocessing={"image_size": [32, 128]},
                     dims=dims, text_layout=layout)  # fmt: skip


def write_table(writer: TeacherStoreWriter, labels: list[str], batch: int = 512) -> None:
    """One table part holding `labels`: random float16 rows up to EOT, zeros past it (masked);
    one random block reused batch after batch (values do not matter, sizes do)."""
    d = writer.spec.dims
    rng = np.random.default_rng(0)
    block = {f"text_s{i}": rng.standard_normal((batch, POSITIONS, d["text"])).astype(np.float16)
             for i in (1, 2, 3)}  # fmt: skip
    block["text_emb"] = rng.standard_normal((batch, d["emb"])).astype(np.float16)
    with open_table_part(writer, POSITIONS, len(labels)) as part:
        for a in range(0, len(labels), batch):
            chunk = labels[a : a + batch]
            valid = np.arange(POSITIONS)[None] < np.array([len(s) + 1 for s in chunk])[:, None]
            feats = {k: v[: len(chunk)] * (valid[..., None] if k != "text_emb" else 1)
                     for k, v in block.items()}  # fmt: skip
            part.append(chunk, feats)
        part.commit()


def image_block(dims: dict, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    shape = (n, dims["image_tokens"], dims["image"])
    return {t: rng.standard_normal(shape).astype(np.float16) for t in STAGES_IMAGE}


def fill_groups(writer: TeacherStoreWriter, shards: Path, labels: dict[str, list[str]]) -> None:
    """A group per shard: random image features (a reused block), references into the table."""
    dims = writer.spec.dims
    block = image_block(dims, 256)
    for path in shard_paths(shards):
        keys = list(labels[path.stem])
        with writer.open_shard(path.stem, expected=len(keys)) as group:
            for a in range(0, len(keys), 256):
                ks = keys[a : a + 256]
                group.give_labels(ks, [labels[path.stem][k] for k in ks])
                group.append(ks, {t: v[: len(ks)] for t, v in block.items()})
            group.commit()


def memory() -> dict[str, int]:
    """This process's resident memory in bytes: anonymous (its own), file-backed (mapped files,
    shareable), and the peak (VmHWM)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out
