"""The training stream: tar shards joined with their cached teacher targets (DESIGN §3, §5, §8).

Per shard, the images of the tar and the targets of the shard's Zarr group are read in the same
stored order and zipped by key (whole-chunk reads on the store side), then shuffled in a buffer,
decoded, augmented and collated into padded batches. Shards are split by DDP rank and by
DataLoader worker, re-ordered every epoch from the seed.

Everything random is a pure function of ``(seed, epoch, rank, worker)`` and of each sample's key,
so a resumed run can skip the batches it already trained on *without decoding them* and continue
with exactly the batches an uninterrupted run would have seen.

Text targets past EOS (``StreamConfig.text_pad``): ``masked`` (default) pads them with zeros and
marks them invalid in ``text_mask``; ``align`` — the official code's way, from a store cached with
``--text-pad align`` — fills every decoder position with the teacher's row of that position (CLIP's
pad-token features past EOT) and marks all valid. By default the stream follows the store.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import decode_image, resize, to_uint8_tensor
from clipocr.pipeline.shards import iter_shard_raw, load_index
from clipocr.pipeline.teacher_store import STAGES_IMAGE, STAGES_TEXT, TEXT_PADS, TeacherStore
from clipocr.pipeline.teacher_store.reader import TEXT_LABEL
from clipocr.train_student.augment import StudentAugment


def assign_shards(
    names: list[str], seed: int, epoch: int, rank: int, world: int, worker: int, workers: int
) -> list[str]:
    """The shards one (rank, worker) reads in `epoch`: an epoch-seeded permutation, strided."""
    order = list(names)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[rank::world][worker::workers]


def worker_batch_counts(counts: list[int], batch_size: int) -> list[int]:
    """Batches each worker emits when its shards hold `counts` samples (last batch partial)."""
    return [math.ceil(c / batch_size) for c in counts]


def batches_to_skip(per_worker: list[int], skip: int) -> list[int]:
    """How many of its own batches each worker skips so that the DataLoader, which takes batches
    round-robin from the workers still running, resumes after its first `skip` batches."""
    done = [0] * len(per_worker)
    alive = [w for w, n in enumerate(per_worker) if n > 0]
    while skip > 0 and alive:
        for w in list(alive):
            if skip == 0:
                break
            done[w] += 1
            skip -= 1
            if done[w] == per_worker[w]:
                alive.remove(w)
    return done


@dataclass
class StreamConfig:
    batch_size: int = 64
    shuffle_buffer: int = 1000
    augment: bool = True
    seed: int = 0
    augment_from_epoch: int = 0  # epochs before this one see clean images (a curriculum)
    text_pad: str | None = None  # "masked" | "align"; None = as the store was cached


class DistillStream(IterableDataset):
    """Collated batches (dicts) from prepared shards, joined with a teacher store if given."""

    def __init__(
        self,
        shard_dir: str | Path,
        charset: Charset,
        cfg: StreamConfig,
        store: TeacherStore | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__()
        self.shard_dir = Path(shard_dir)
        index = load_index(self.shard_dir)
        if index["charset"] != charset.name:
            raise InputError(
                f"{self.shard_dir}: shards were prepared for charset {index['charset']}, "
                f"training asks for {charset.name}"
            )
        self.counts = {Path(s["name"]).stem: int(s["count"]) for s in index["shards"]}
        self.charset, self.cfg, self.store = charset, cfg, store
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip = 0
        self.num_workers = 1
        self.missing: dict[str, set[str]] = {}
        self.text_pad = cfg.text_pad or (store.spec.text_pad if store is not None else "masked")
        if self.text_pad not in TEXT_PADS:
            raise InputError(f"text pad {self.text_pad!r}: expected one of {', '.join(TEXT_PADS)}")
        if store is not None:
            store.check_text_pad(self.text_pad)
            self._count_targets(store)
        self._augment = StudentAugment() if cfg.augment else None

    def _count_targets(self, store: TeacherStore) -> None:
        """Count what the join yields: a shard's samples less those the teacher could not read
        (listed missing), so that the epoch's batch count is the one the stream delivers."""
        have = store.shards()
        absent = [name for name in self.counts if name not in have]
        if absent:
            raise InputError(
                f"{store.root}: no complete teacher targets for shard(s) "
                f"{', '.join(absent[:5])}{' …' if len(absent) > 5 else ''}; "
                "run `clipocr cache-teacher` on these shards first"
            )
        for name, count in self.counts.items():
            self.missing[name] = set(store.missing(name))
            if have[name] + len(self.missing[name]) != count:
                raise InputError(
                    f"{store.root}/{name}: {have[name]} targets + {len(self.missing[name])} "
                    f"missing, but shards.json counts {count} samples; the store was made from "
                    "other shards"
                )
            self.counts[name] = have[name]
        # The reader checks a group's arrays against the manifest as it opens it: reading one
        # sample now refuses an edited or mismatched manifest before training, not mid-epoch.
        first = next((name for name, n in have.items() if n and name in self.counts), None)
        if first is not None:  # (and reads the text table, if any, before workers fork)
            next(iter(store.iter_shard(first, self.text_pad)))

    # -- bookkeeping the trainer uses ----------------------------------------------------------
    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's order and the number of batches already consumed in it."""
        self.epoch, self.skip = epoch, skip_batches

    def _per_worker_batches(self, rank: int, epoch: int) -> list[int]:
        names = list(self.counts)
        return worker_batch_counts(
            [
                sum(
                    self.counts[n]
                    for n in assign_shards(
                        names, self.cfg.seed, epoch, rank, self.world, w, self.num_workers
                    )
                )
                for w in range(self.num_workers)
            ],
            self.cfg.batch_size,
        )

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches the DataLoader yields per epoch; under DDP the smallest rank's count, so every
        rank takes the same number of steps."""
        return min(sum(self._per_worker_batches(r, epoch)) for r in range(self.world))

    def __len__(self) -> int:
        return self.batches_per_epoch(self.epoch)

    # -- the stream ----------------------------------------------------------------------------
    def _joined(self, names: list[str]) -> Iterator[dict]:
        for name in names:
            path = self.shard_dir / f"{name}.tar"
            samples = iter_shard_raw(path)
            if self.store is None:
                for key, data, label in samples:
                    yield {"key": key, "data": data, "label": label}
                continue
            missing = self.missing[name]
            targets = self.store.iter_shard(name, self.text_pad)
            for key, data, label in samples:
                if key in missing:
                    continue  # the teacher could not read this image either
                try:
                    tkey, feats = next(targets)
                except StopIteration:
                    raise InputError(
                        f"{self.store.root}/{name}: fewer teacher targets than samples in {path} "
                        f"(ran out at {key})"
                    ) from None
                if tkey != key:
                    raise InputError(
                        f"{self.store.root}/{name}: key {tkey} where {path} has {key}; "
                        "the store was made from other shards"
                    )
                self._check_text(name, key, label, feats)
                yield {"key": key, "data": data, "label": label, "feats": feats}

    def _check_text(self, name: str, key: str, label: str, feats: dict) -> None:
        """The sample's text targets belong to its label (table layout: the very label)."""
        where = f"{self.store.root}/{name}"
        if TEXT_LABEL in feats and str(feats[TEXT_LABEL]) != label:
            raise InputError(
                f"{where}: sample {key} refers to text targets of {str(feats[TEXT_LABEL])!r}, "
                f"its label is {label!r}; was the store made from other shards or charset?"
            )
        if STAGES_TEXT[0] not in feats:
            return
        rows, have = len(label) + 1, feats[STAGES_TEXT[0]].shape[0]
        if (have != rows) if self.text_pad == "masked" else (have < rows):
            raise InputError(
                f"{where}: sample {key} has {have} text rows for label {label!r} (expected "
                f"{rows}); was the store made with another charset?"
            )

    def _decode(self, sample: dict) -> dict | None:
        try:
            img = decode_image(sample["data"], draft=True)
        except Exception:
            return None  # counted at prepare time; a shard edited since is not worth a crash
        if self._augment is not None and self.epoch >= self.cfg.augment_from_epoch:
            seed = zlib.crc32(f"{self.cfg.seed}/{self.epoch}/{sample['key']}".encode())
            img = self._augment(img, seed)
        sample["image"] = to_uint8_tensor(resize(img))
        del sample["data"]
        return sample

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.num_workers:
            raise RuntimeError(
                f"DistillStream.num_workers={self.num_workers} but the DataLoader has {workers}"
            )
        names = assign_shards(
            list(self.counts), self.cfg.seed, self.epoch, self.rank, self.world, worker, workers
        )
        skip = batches_to_skip(self._per_worker_batches(self.rank, self.epoch), self.skip)
        rng = random.Random(f"{self.cfg.seed}/{self.epoch}/{self.rank}/{worker}")
        stream = self._joined(names)
        if self.cfg.shuffle_buffer > 1:
            buf = self.cfg.shuffle_buffer
            stream = wds.shuffle(buf, initial=buf, rng=rng)(stream)
        # Batches are cut before decoding so that skipped ones cost no decode or augmentation.
        batches = wds.batched(self.cfg.batch_size, collation_fn=list)(stream)
        for i, group in enumerate(batches):
            if i < skip[worker]:
                continue
            decoded = [s for s in map(self._decode, group) if s is not None]
            if decoded:
                yield collate(decoded, self.charset, self.text_pad)


def collate(samples: list[dict], charset: Charset, text_pad: str = "masked") -> dict:
    """Stack images; teacher text rows at the decoder's positions with a validity mask.

    ``masked``: a sample's L + 1 rows, zeros after, valid up to EOS. ``align``: the first
    ``width`` of the sample's rows at every position (c1..cL, EOT, pad…), all valid."""
    labels = [s["label"] for s in samples]
    tgt_in, tgt_out = charset.batch_targets(labels)
    batch = {
        "images": torch.stack([s["image"] for s in samples]),
        "labels": labels,
        "keys": [s["key"] for s in samples],
        "tgt_in": tgt_in,
        "tgt_out": tgt_out,
    }
    if "feats" not in samples[0]:
        return batch
    feats = [s["feats"] for s in samples]
    for name in STAGES_IMAGE:
        batch[name] = torch.from_numpy(np.stack([f[name] for f in feats])).half()
    width = tgt_in.shape[1]
    align = text_pad == "align"
    mask = torch.zeros(len(samples), width, dtype=torch.bool)
    for row, label in enumerate(labels):
        mask[row, : width if align else len(label) + 1] = True
    batch["text_mask"] = mask
    for name in STAGES_TEXT:
        dim = feats[0][name].shape[1]
        padded = np.zeros((len(samples), width, dim), dtype=np.float16)
        for row, f in enumerate(feats):
            rows = f[name][:width]
            padded[row, : rows.shape[0]] = rows
        batch[name] = torch.from_numpy(padded)
    batch["text_emb"] = torch.from_numpy(np.stack([f["text_emb"] for f in feats])).half()
    return batch
