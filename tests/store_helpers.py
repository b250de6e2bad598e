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


POSITIONS = 6  # text-table rows per label in these tests (a context of 7)


def table_feats(rng, labels: list[str], pad: str = "masked"):
    """Text-table features for `labels`: every position, zero past EOT when masked."""
    b = len(labels)
    feats = {t: rng.standard_normal((b, POSITIONS, 8)).astype(np.float32) for t in STAGES_TEXT}
    feats["text_emb"] = rng.standard_normal((b, 8)).astype(np.float32)
    if pad == "masked":
        valid = np.arange(POSITIONS)[None, :] < np.array([len(s) + 1 for s in labels])[:, None]
        for t in STAGES_TEXT:
            feats[t] *= valid[..., None]
    return feats


def write_table_store(root, labels_per_shard: dict[str, list[str]], pad="masked", seed=0, **over):
    """A table-layout store: one table part with every distinct label, then one group per shard
    (image taps + references). Returns (table features by label, image features by key)."""
    from clipocr.pipeline.teacher_store import open_table_part

    rng = np.random.default_rng(seed)
    writer = TeacherStoreWriter(root, spec(text_layout="table", text_pad=pad, **over),
                                chunk_samples=4)  # fmt: skip
    distinct = sorted({s for labels in labels_per_shard.values() for s in labels})
    feats = table_feats(rng, distinct, pad)
    with open_table_part(writer, POSITIONS, len(distinct)) as part:
        part.append(distinct, feats)
        part.commit()
    by_label = {s: {t: feats[t][i] for t in feats} for i, s in enumerate(distinct)}
    images = {}
    for shard, labels in labels_per_shard.items():
        keys = [f"{shard}/{i:06d}" for i in range(len(labels))]
        img = {t: rng.standard_normal((len(keys), 3, 16)).astype(np.float32) for t in STAGES_IMAGE}
        with writer.open_shard(shard, expected=len(keys), labels=dict(zip(keys, labels))) as g:
            g.append(keys, img)
            g.commit()
        images |= {k: {t: img[t][i] for t in img} for i, k in enumerate(keys)}
    return by_label, images
