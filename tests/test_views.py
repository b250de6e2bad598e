"""Cached views (issue 19, `pipeline/views.py`): the seed function, the view pixels in another
process, view 0, the train-view rule."""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from clipocr.pipeline import views as V
from clipocr.pipeline.view_record import probe_images

KEYS = ["shard-000000/000001", "shard-000000/000002", "mj-000003/004095", "st/7"]


def _in_another_process(store_seed: int) -> tuple[list[int], np.ndarray]:
    """What a freshly spawned worker computes: seeds and view pixels of the probe images."""
    images = probe_images()[: len(KEYS)]
    seeds = [V.view_seed(store_seed, key, view) for key in KEYS for view in range(4)]
    pixels = np.stack([
        V.view_pixels(img, key, view, store_seed)
        for img, key in zip(images, KEYS)
        for view in range(4)
    ])  # fmt: skip
    return seeds, pixels


def test_view_seed_is_the_documented_function() -> None:
    """Pinned values (a change of the function breaks every stored view), 63 bits, and every
    argument matters."""
    assert V.view_seed(0, "shard-000000/000000001", 1) == 3143522216801020307
    assert V.view_seed(7, "mj/12", 3) == 2704362201429576958
    seeds = {V.view_seed(s, k, v) for s in (0, 1) for k in KEYS for v in range(4)}
    assert len(seeds) == 2 * len(KEYS) * 4 and all(0 <= s < 1 << 63 for s in seeds)
    with pytest.raises(ValueError, match="view -1"):
        V.view_seed(0, KEYS[0], -1)


def test_a_spawned_worker_gets_the_same_seeds_and_pixels() -> None:
    """Seeds and pixels computed in a spawned process (new interpreter, new hash salt, nothing
    inherited) are those of this one, bit for bit."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        seeds, pixels = pool.submit(_in_another_process, 5).result(timeout=120)
    here_seeds, here_pixels = _in_another_process(5)
    assert seeds == here_seeds
    assert pixels.dtype == np.uint8 and pixels.shape == (len(KEYS) * 4, 3, 32, 128)
    assert np.array_equal(pixels, here_pixels)


def test_view_zero_is_the_clean_image_and_views_differ() -> None:
    images = probe_images()
    for i, img in enumerate(images):
        assert V.view_pixels(img, f"k/{i}", 0, 3) is img
    # Views 1..3 of each image: with 3 ops at p = 0.5 a view is untouched 1 time in 8, so most
    # views differ from the clean image, and no two of an image's augmented views coincide
    # unless both happen to be untouched.
    changed, distinct = 0, 0
    for i, img in enumerate(images):
        views = [V.view_pixels(img, f"k/{i}", v, 3) for v in range(1, 4)]
        assert all(v.shape == (3, 32, 128) and v.dtype == np.uint8 for v in views)
        changed += sum(not np.array_equal(v, img) for v in views)
        distinct += len({v.tobytes() for v in views})
    assert changed >= 0.75 * 3 * len(images) and distinct >= 0.75 * 3 * len(images)
    # another store seed gives other views of the same sample
    other = [V.view_pixels(img, f"k/{i}", 1, 4) for i, img in enumerate(images)]
    same = [V.view_pixels(img, f"k/{i}", 1, 3) for i, img in enumerate(images)]
    assert sum(not np.array_equal(a, b) for a, b in zip(other, same)) >= len(images) // 2


def test_view_pixels_refuses_an_image_that_is_not_decoded_32x128() -> None:
    with pytest.raises(ValueError, match="uint8"):
        V.view_pixels(np.zeros((3, 32, 100), np.uint8), "k", 1, 0)


def test_train_view_visits_every_view_once_per_cycle() -> None:
    shards = [f"shard-{i:06d}" for i in range(64)]
    for k in (1, 2, 4):
        for shard in shards[:8]:
            assert sorted(V.train_view(3, e, shard, k) for e in range(10, 10 + k)) == list(range(k))
    starts = Counter(V.train_view(3, 0, shard, 4) for shard in shards)
    assert len(starts) == 4 and min(starts.values()) >= 8  # an epoch mixes views
    assert [V.train_view(3, 0, s, 4) for s in shards] != [V.train_view(4, 0, s, 4) for s in shards]
