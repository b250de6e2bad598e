"""`teacher-pretrain`'s data: rendered words held in memory, batches without repeated labels,
and held-out words never seen in training.

The CPU run revisits every sample several times, so images are decoded once into one uint8
tensor; batches never hold the same label twice, since a duplicate word would be a false
negative for the contrastive loss.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from clipocr.pipeline.charset import Charset, LabelRejected
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import LmdbReader
from clipocr.pipeline.preprocess import IMG_H, IMG_W, load_uint8


def load_words(
    path: Path, charset: Charset, limit: int | None = None
) -> tuple[torch.Tensor, list[str], Counter]:
    """All images of an STR LMDB as one uint8 ``(N, 3, 32, 128)`` tensor + prepared labels.

    Held in memory (12 KB/sample) because the CPU run revisits every sample several times and
    decoding each time would cost as much as a training step's data loading budget.
    """
    reader = LmdbReader(path)
    cap = min(len(reader), limit) if limit else len(reader)
    images = torch.empty((cap, 3, IMG_H, IMG_W), dtype=torch.uint8)
    labels: list[str] = []
    rejected: Counter[str] = Counter()
    for index, data, raw in reader.iter_raw():
        if len(labels) == cap:
            break
        try:
            label = charset.prepare(raw)
            images[len(labels)] = load_uint8(data, draft=True)
        except LabelRejected as err:
            rejected[err.reason] += 1
            continue
        except Exception as err:  # PIL raises many types on corrupt data
            raise InputError(f"{path}: sample {index}: undecodable image ({err})") from None
        labels.append(label)
    rejected.update(reader.skipped)
    reader.close()
    return images[: len(labels)], labels, rejected


def load_many(
    paths: Sequence[Path], charset: Charset, limit: int | None = None
) -> tuple[torch.Tensor, list[str], Counter]:
    """`load_words` over several LMDBs, concatenated (at most `limit` samples in all)."""
    images, labels, rejected = [], [], Counter()
    for path in paths:
        left = None if limit is None else limit - len(labels)
        if left == 0:
            break
        imgs, labs, rej = load_words(path, charset, left)
        images.append(imgs)
        labels += labs
        rejected.update(rej)
    return torch.cat(images), labels, rejected


def unique_label_batches(
    labels: list[str], batch_size: int, gen: torch.Generator
) -> Iterator[list[int]]:
    """Endless random batches of sample indices with no label twice in a batch.

    A repeated label in a batch is skipped for the rest of that pass (it comes back in a later
    pass), which keeps every contrastive target a true positive.
    """
    if len(set(labels)) < batch_size:
        raise InputError(f"only {len(set(labels))} distinct labels for batch size {batch_size}")
    while True:
        batch: list[int] = []
        seen: set[str] = set()
        for i in torch.randperm(len(labels), generator=gen).tolist():
            if labels[i] in seen:
                continue
            batch.append(i)
            seen.add(labels[i])
            if len(batch) == batch_size:
                yield batch
                batch, seen = [], set()


def heldout_words(
    images: torch.Tensor, labels: list[str], train_labels: set[str], size: int
) -> tuple[torch.Tensor, list[str], int]:
    """First `size` held-out samples with distinct labels unseen in training (+ count dropped)."""
    keep, seen, dropped = [], set(), 0
    for i, label in enumerate(labels):
        if label in train_labels:
            dropped += 1
        elif label not in seen:
            seen.add(label)
            keep.append(i)
        if len(keep) == size:
            break
    return images[keep], [labels[i] for i in keep], dropped
