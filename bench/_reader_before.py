"""The shard reader and cache loader as they were before issue 14 (commit 670bbf1), kept only so
`bench_pipeline.py` can measure old and new side by side in one run on the same shards.

* tar: webdataset's `WebDataset` over Python's `tarfile`;
* decode: ``Image.open`` → ``draft`` → ``convert("RGB")`` (a copy even of an RGB image) →
  bicubic resize → ``np.asarray(...).copy()`` → a permuted tensor;
* cache loader: per shard, the whole tar read into a list, then a fresh `DataLoader` with
  `workers` processes (``prefetch_factor=4``, batches pickled back through shared memory).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset


def iter_shard_raw(path: str | Path) -> Iterator[tuple[str, bytes, str]]:
    dataset = wds.WebDataset(
        str(path), shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None
    )
    for sample in dataset:
        yield sample["__key__"], sample.get("jpg") or sample.get("png"), sample["txt"].decode()


def load_uint8(data: bytes, *, draft: bool = False) -> torch.Tensor:
    img = Image.open(io.BytesIO(data))
    if draft and img.format == "JPEG":
        img.draft("RGB", (256, 64))
    img.load()
    img = img.convert("RGB")
    if img.size != (128, 32):
        img = img.resize((128, 32), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def read_shard(path: Path) -> Iterator[tuple[str, torch.Tensor, str]]:
    """The old `ShardReader` for one shard: decode in-process, training path."""
    for key, data, label in iter_shard_raw(path):
        yield key, load_uint8(data, draft=True), label


class _ShardImages(Dataset):
    def __init__(self, path: Path) -> None:
        self.samples = list(iter_shard_raw(path))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str]:
        key, data, label = self.samples[i]
        try:
            return key, load_uint8(data, draft=True), label
        except Exception:
            return key, None, label


def _collate(items: list[tuple[str, torch.Tensor | None, str]]) -> dict:
    good = [it for it in items if it[1] is not None]
    return {
        "keys": [k for k, _, _ in good],
        "images": torch.stack([im for _, im, _ in good]) if good else None,
        "labels": [lab for _, _, lab in good],
        "missing": [k for k, im, _ in items if im is None],
    }


def loader_batches(path: Path, workers: int, batch_size: int, timeout: float) -> Iterator[dict]:
    """The old runner's batches of one shard (its `_ShardImages` + `DataLoader`)."""
    loader = DataLoader(
        _ShardImages(path),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
        timeout=timeout if workers else 0,
    )
    yield from loader
