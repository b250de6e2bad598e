"""A worker's order from counts alone: shards read round robin, a shuffle buffer over them, and
which samples a resumed run may pass unread."""

from __future__ import annotations

import random

import numpy as np

from clipocr.train_student.mixing import emission_order, plan, read_order


def test_read_order_round_robin_with_refills_and_empty_shards() -> None:
    shard, index = read_order([3, 0, 2, 4], open_shards=2)
    got = list(zip(shard.tolist(), index.tolist(), strict=True))
    assert got == [(0, 0), (2, 0), (0, 1), (2, 1), (0, 2), (3, 0), (3, 1), (3, 2), (3, 3)]
    one = read_order([2, 3], open_shards=1)
    assert one[0].tolist() == [0, 0, 1, 1, 1] and one[1].tolist() == [0, 1, 0, 1, 2]


def test_emission_is_a_permutation_within_the_buffer() -> None:
    emit, reads = emission_order(500, 16, random.Random("s"))
    assert sorted(emit.tolist()) == list(range(500))
    assert np.all(emit < reads)  # handed out only once read
    held = reads - np.arange(1, 501)  # read but not yet handed out, after each step
    assert held.max() <= 16 - 1 and held.min() >= 0
    same = emission_order(500, 16, random.Random("s"))
    assert np.array_equal(same[0], emit)  # a function of the seed alone
    plain, plain_reads = emission_order(5, 1, random.Random(0))
    assert plain.tolist() == [0, 1, 2, 3, 4] and plain_reads.tolist() == [1, 2, 3, 4, 5]


def test_needed_marks_what_the_steps_after_a_resume_hand_out() -> None:
    p = plan([4, 4, 4], open_shards=2, buffer=3, seed="x")
    needed = p.needed(5)
    assert needed.sum() == len(p) - 5
    assert set(np.flatnonzero(needed).tolist()) == set(p.emit[5:].tolist())
