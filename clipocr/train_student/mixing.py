"""The order one DataLoader worker reads and hands out its samples, as a function of counts alone.

A worker streams its shards (each front to back: tar members and store chunks are read in
order). Two things decide how well a batch mixes (issue 22, item 7):

* **open shards**: the worker reads `open_shards` shards at once, one sample from each in turn
  (round robin); when one ends, the next shard of its list takes its place. A batch then draws
  from as many shards instead of one shard's window;
* **a shuffle buffer** of `buffer` samples over that reading order: once full, each step hands
  out a uniformly drawn sample of the buffer and puts the next one read in its place.

Both depend on the shards' sample counts and the seed only, never on the samples, so the whole
order is computed up front as integers (`plan`). That is what lets a resumed run skip the
samples of its first batches *by count* (issue 22, item 4): it knows which samples those
batches held without reading any of them, and the reader passes them at the shard and chunk
level (`teacher_store.GroupSamples.skip`) — only the samples still to come are read and decoded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


def read_order(counts: list[int], open_shards: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard position, index in shard) of every sample in the order the worker reads them:
    `open_shards` shards round robin, a finished shard's slot taken by the next in the list."""
    total = sum(counts)
    shard = np.empty(total, np.int32)
    index = np.empty(total, np.int64)
    slots = list(range(min(max(open_shards, 1), len(counts))))
    nxt = len(slots)
    pos = [0] * len(counts)
    t = 0
    while slots:
        alive = []
        for s in slots:
            while s is not None and pos[s] >= counts[s]:  # empty shards take no turn
                s = nxt if nxt < len(counts) else None
                nxt += s is not None
            if s is None:
                continue
            shard[t], index[t] = s, pos[s]
            pos[s] += 1
            t += 1
            alive.append(s)
        slots = alive
    return shard, index


def emission_order(n: int, buffer: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """(reading position handed out at each step, samples read before that step) for a shuffle
    buffer of `buffer` samples over `n` samples read in order (``buffer <= 1``: no shuffling)."""
    if buffer <= 1:
        order = np.arange(n, dtype=np.int64)
        return order, order + 1
    emit = np.empty(n, np.int64)
    reads = np.empty(n, np.int64)
    buf = list(range(min(buffer, n)))
    r = len(buf)
    randrange = rng.randrange
    for t in range(n):
        j = randrange(len(buf))
        emit[t], reads[t] = buf[j], r
        if r < n:
            buf[j] = r
            r += 1
        else:
            buf[j] = buf[-1]
            buf.pop()
    return emit, reads


@dataclass(frozen=True)
class Plan:
    """One worker's epoch: reading order (`shard`, `index`) and, per step, the reading position
    handed out (`emit`) and how many samples must have been read by then (`reads`)."""

    shard: np.ndarray
    index: np.ndarray
    emit: np.ndarray
    reads: np.ndarray

    def __len__(self) -> int:
        return len(self.emit)

    def needed(self, start: int) -> np.ndarray:
        """Per reading position: whether the steps from `start` on hand it out (the samples of
        the steps before it were trained on already and are skipped unread)."""
        step_of = np.empty(len(self.emit), np.int64)
        step_of[self.emit] = np.arange(len(self.emit))
        return step_of >= start


def plan(counts: list[int], open_shards: int, buffer: int, seed: str) -> Plan:
    """The worker's order for shards holding `counts` samples (in the worker's shard order)."""
    shard, index = read_order(counts, open_shards)
    emit, reads = emission_order(len(shard), buffer, random.Random(seed))
    return Plan(shard, index, emit, reads)
