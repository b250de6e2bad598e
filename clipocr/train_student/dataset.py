"""The training stream: tar shards joined with their cached teacher targets (DESIGN §3, §5, §8).

Per shard, the images of the tar and the targets of the shard's Zarr group are read in the same
stored order and zipped by key (whole-chunk reads on the store side). Shards are split by DDP
rank and by DataLoader worker, re-ordered every epoch from the seed; each worker reads
`StreamConfig.open_shards` of its shards at once and hands samples out through a shuffle buffer
(`mixing`), then they are decoded, augmented and collated into padded batches.

A buffered sample holds its own compact copy of its targets in the store's dtype (float16, or
int8 + scales), never a view into a decoded chunk, so a worker's memory is bounded by buffer ×
sample bytes + one chunk per open shard; targets become float32/float16 tensors at collate.

Everything random is a pure function of ``(seed, epoch, rank, worker)``, the shards' counts and
each sample's key, so a resumed run knows which samples its first batches held without reading
them: it passes them by count (whole store chunks unread, no image decoded) and continues with
exactly the batches an uninterrupted run would have seen.

Text targets past EOS (``StreamConfig.text_pad``): ``masked`` (default) pads them with zeros and
marks them invalid in ``text_mask``; ``align`` — the official code's way, from a store cached with
``--text-pad align`` — fills every decoder position with the teacher's row of that position (CLIP's
pad-token features past EOT) and marks all valid. By default the stream follows the store.

Cached views (a K-view store, ``cache-teacher --views K``, DESIGN §5) with augmentation on: each
epoch a shard's samples show view ``train_view(seed, epoch, shard, K)`` — every view once per K
epochs — read from the store (that view's image taps) and made here by `view_pixels` from the
same decode the cache job used, so the student's pixels are bitwise those the teacher saw, in
any worker, rank or resumed run (all a function of seed, epoch and key). View 0 is the clean
image; epochs before ``augment_from_epoch`` show it. A store whose views would not replay here
is refused (`replay_or_refuse`) unless ``allow_view_drift``.
"""

from __future__ import annotations

import logging
import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from clipocr.pipeline.augment import StudentAugment
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import decode_image, decode_uint8, resize, to_uint8_tensor
from clipocr.pipeline.shards import iter_shard_raw, load_index
from clipocr.pipeline.teacher_store import STAGES_IMAGE, STAGES_TEXT, TEXT_PADS, TeacherStore
from clipocr.pipeline.teacher_store.reader import TEXT_LABEL, GroupSamples
from clipocr.pipeline.teacher_store.streams import Encoded, decode_rows, stack_rows
from clipocr.pipeline.view_record import ViewsRecord, replay_or_refuse
from clipocr.pipeline.views import train_view, view_pixels
from clipocr.train_student.mixing import plan

log = logging.getLogger(__name__)


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
    open_shards: int = 8  # shards each worker reads at once, round robin (mixing, `mixing`)
    allow_view_drift: bool = False  # train on cached views that would not replay exactly here


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
        # K-view store + augmentation: the stream replays the store's views (module docstring)
        self.views: ViewsRecord | None = None
        if store is not None and store.spec.view_count > 1 and cfg.augment:
            self.views = ViewsRecord.from_dict(store.spec.views, f"{store.root}/manifest.json")
            replay_or_refuse(self.views, store.root, cfg.allow_view_drift)
            log.info("%s: replaying its %d cached views per sample (one per shard and epoch)",
                     store.root, self.views.count)  # fmt: skip

    def view_of(self, shard: str) -> int:
        """The cached view `shard`'s samples show this epoch (0 without views)."""
        if self.views is None or self.epoch < self.cfg.augment_from_epoch:
            return 0
        return train_view(self.cfg.seed, self.epoch, shard, self.views.count)

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
        # The text table, if any, is unpacked on this node (once) before workers start.
        store.prepare(self.text_pad)
        first = next((name for name, n in have.items() if n and name in self.counts), None)
        if first is not None:
            store.open_samples(first, self.text_pad).take()

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
        """Every sample of `names`, one shard after the other, in stored order (tools, benches)."""
        for name in names:
            shard = _ShardSamples(self, name)
            for _ in range(self.counts[name]):
                yield shard.take()

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
        value = feats[STAGES_TEXT[0]]
        rows = len(label) + 1
        have = len(value.data) if isinstance(value, Encoded) else len(value)
        if (have != rows) if self.text_pad == "masked" else (have < rows):
            raise InputError(
                f"{where}: sample {key} has {have} text rows for label {label!r} (expected "
                f"{rows}); was the store made with another charset?"
            )

    def _decode(self, sample: dict) -> dict | None:
        if self.views is not None:
            return self._decode_view(sample)
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

    def _decode_view(self, sample: dict) -> dict | None:
        """The sample's cached view: the cache job's decode, then `view_pixels` (views on)."""
        try:
            pixels = decode_uint8(sample.pop("data"), draft=True)
        except Exception:
            return None
        aug = self.views.augment
        pixels = view_pixels(pixels, sample["key"], sample["view"], self.views.store_seed,
                             magnitude=aug.magnitude, num_ops=aug.num_ops)  # fmt: skip
        sample["image"] = torch.from_numpy(pixels)
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
        counts = [self.counts[n] for n in names]
        skip = batches_to_skip(self._per_worker_batches(self.rank, self.epoch), self.skip)
        seed = f"{self.cfg.seed}/{self.epoch}/{self.rank}/{worker}"
        order = plan(counts, self.cfg.open_shards, self.cfg.shuffle_buffer, seed)
        bs = self.cfg.batch_size
        start = min(skip[worker] * bs, len(order))
        needed = order.needed(start)  # samples of the skipped batches are passed unread
        open_: dict[int, _ShardSamples] = {}
        passed = [0] * len(names)  # per shard: samples to pass before the next one is taken
        held: dict[int, dict] = {}  # read, not yet handed out: at most the shuffle buffer
        read, group = 0, []
        for t in range(start, len(order)):
            while read < order.reads[t]:
                s = int(order.shard[read])
                if needed[read]:
                    shard = open_.get(s) or open_.setdefault(s, _ShardSamples(self, names[s]))
                    shard.skip(passed[s])
                    passed[s] = 0
                    held[read] = shard.take()
                else:
                    passed[s] += 1
                if order.index[read] == counts[s] - 1:
                    open_.pop(s, None)  # the shard is done: its chunks and file go
                read += 1
            group.append(held.pop(int(order.emit[t])))
            if len(group) == bs or t == len(order) - 1:
                decoded = [s for s in map(self._decode, group) if s is not None]
                group = []
                if decoded:
                    yield collate(decoded, self.charset, self.text_pad)


class _ShardSamples:
    """One shard's joined samples (tar + store group) in order. `skip` passes samples without
    decoding anything (the tar's members are read past; store chunks holding only passed
    samples are not read at all); `take` returns the next sample with its compact targets."""

    def __init__(self, stream: DistillStream, name: str) -> None:
        self.stream, self.name = stream, name
        self.path = stream.shard_dir / f"{name}.tar"
        self.samples = iter_shard_raw(self.path)
        store = stream.store
        self.targets: GroupSamples | None = None
        self.view = stream.view_of(name)
        if store is not None:
            self.targets = store.open_samples(name, stream.text_pad, self.view)
        self.missing = stream.missing.get(name, set())

    def _raw(self) -> tuple[str, bytes, str]:
        for key, data, label in self.samples:
            if key not in self.missing:  # the teacher could not read this image either
                return key, data, label
        raise InputError(f"{self.path}: fewer samples than shards.json and the store count")

    def _match(self, key: str) -> None:
        store, targets = self.stream.store, self.targets
        if targets.next >= targets.count:
            raise InputError(
                f"{store.root}/{self.name}: fewer teacher targets than samples in {self.path} "
                f"(ran out at {key})"
            )
        if targets.keys[targets.next] != key:
            raise InputError(
                f"{store.root}/{self.name}: key {targets.keys[targets.next]} where {self.path} "
                f"has {key}; the store was made from other shards"
            )

    def skip(self, n: int) -> None:
        for _ in range(n):
            key, _, _ = self._raw()
            if self.targets is not None:
                self._match(key)
                self.targets.skip(1)

    def take(self) -> dict:
        key, data, label = self._raw()
        sample = {"key": key, "data": data, "label": label, "view": self.view}
        if self.targets is not None:
            self._match(key)
            _, feats = self.targets.take()
            self.stream._check_text(self.name, key, label, feats)
            sample["feats"] = feats
        return sample


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
        batch[name] = torch.from_numpy(stack_rows([f[name] for f in feats])).half()
    width = tgt_in.shape[1]
    align = text_pad == "align"
    mask = torch.zeros(len(samples), width, dtype=torch.bool)
    for row, label in enumerate(labels):
        mask[row, : width if align else len(label) + 1] = True
    batch["text_mask"] = mask
    for name in STAGES_TEXT:
        rows = [f[name] for f in feats]
        dim = (rows[0].data if isinstance(rows[0], Encoded) else rows[0]).shape[1]
        padded = np.zeros((len(samples), width, dim), dtype=np.float16)
        for row, value in enumerate(rows):
            value = decode_rows(value) if isinstance(value, Encoded) else value
            n = min(len(value), width)
            padded[row, :n] = value[:n]
        batch[name] = torch.from_numpy(padded)
    batch["text_emb"] = torch.from_numpy(stack_rows([f["text_emb"] for f in feats])).half()
    return batch
