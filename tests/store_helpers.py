"""Shared by the teacher-store tests (test_store_*.py): a tiny spec and teacher-like batches."""

from __future__ import annotations

import numpy as np

from clipocr.pipeline.teacher_store import STAGES_IMAGE, STAGES_TEXT, StoreSpec, TeacherStoreWriter

DIMS = {"image_tokens": 3, "image": 16, "text": 8, "emb": 8}
SHARD = "shard-000000"


def spec(**over) -> StoreSpec:
    kw = dict(
        teacher={"model": "ViT-B-16", "pretrained": "openai", "checksum": "abc"},
        preprocessing={"image_size": [32, 128], "pos_embed": "crop"},
        dims=DIMS,
    )
    kw.update(over)
    return StoreSpec(**kw)


def batch(rng, start: int, b: int, outliers: bool = False, shard: str = SHARD):
    """Keys plus teacher-like features; text padded to 6 rows with 1..6 valid ones."""
    feats = {t: rng.standard_normal((b, 3, 16)).astype(np.float32) for t in STAGES_IMAGE}
    feats |= {t: rng.standard_normal((b, 6, 8)).astype(np.float32) for t in STAGES_TEXT}
    feats["text_emb"] = rng.standard_normal((b, 8)).astype(np.float32)
    feats["text_lengths"] = rng.integers(1, 7, size=b)
    if outliers:
        for t in STAGES_IMAGE:
            feats[t][..., :2] *= 40.0
    return [f"{shard}/{i:06d}" for i in range(start, start + b)], feats


def write_shard(root, sp, sizes, seed=0, chunk=4, missing=(), **kw):
    rng = np.random.default_rng(seed)
    writer = TeacherStoreWriter(root, sp, chunk_samples=chunk)
    batches, start = [], 0
    with writer.open_shard(SHARD) as group:
        for b in sizes:
            keys, feats = batch(rng, start, b, **kw)
            group.append(keys, feats)
            batches.append((keys, feats))
            start += b
        group.commit(missing=missing)
    return batches


def expected_samples(batches):
    """Per sample, the input features with text cut to its valid rows."""
    out = []
    for keys, feats in batches:
        for i, key in enumerate(keys):
            n = feats["text_lengths"][i]
            sample = {t: feats[t][i] for t in STAGES_IMAGE + ("text_emb",)}
            sample |= {t: feats[t][i, :n] for t in STAGES_TEXT}
            out.append((key, sample))
    return out
