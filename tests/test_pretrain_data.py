"""Pretraining data: words in memory, batches without repeated labels, unseen held-out words."""

from __future__ import annotations

import pytest
import torch
from conftest import text_image, write_lmdb

from clipocr.cache_teacher.pretrain_data import (
    heldout_words,
    load_many,
    load_words,
    unique_label_batches,
)
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError

CS36 = Charset.from_name("36")


def test_batches_never_repeat_a_label():
    labels = ["a", "b", "a", "c", "d", "a", "b", "e"]
    batches = unique_label_batches(labels, 4, torch.Generator().manual_seed(0))
    for _ in range(20):
        batch = next(batches)
        assert len(batch) == 4 and len({labels[i] for i in batch}) == 4


def test_too_few_distinct_labels_for_a_batch_is_an_input_error():
    with pytest.raises(InputError, match="distinct labels"):
        next(unique_label_batches(["a", "b", "a"], 3, torch.Generator()))


def test_heldout_words_are_unseen_and_distinct():
    images = torch.arange(6).view(6, 1)
    imgs, labels, dropped = heldout_words(images, ["a", "x", "y", "x", "b", "z"], {"a", "b"}, 5)
    assert labels == ["x", "y", "z"] and imgs.view(-1).tolist() == [1, 2, 5] and dropped == 2


def test_words_load_as_uint8_with_rejected_labels_counted(tmp_path):
    words = ["hello", "?!", "World", "x" * 30]
    db = write_lmdb(tmp_path / "db", [(text_image(w), w) for w in words])
    images, labels, rejected = load_words(db, CS36)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 32, 128)
    assert labels == ["hello", "world"] and sum(rejected.values()) == 2


def test_load_many_concatenates_up_to_the_limit(tmp_path):
    one = write_lmdb(tmp_path / "one", [(text_image(w), w) for w in ["ab", "cd"]])
    two = write_lmdb(tmp_path / "two", [(text_image(w), w) for w in ["ef", "gh"]])
    images, labels, _ = load_many([one, two], CS36, limit=3)
    assert labels == ["ab", "cd", "ef"] and len(images) == 3


def test_undecodable_image_is_an_input_error(tmp_path):
    db = write_lmdb(tmp_path / "db", [(b"\x89PNG\r\n\x1a\nbroken", "word")])
    with pytest.raises(InputError, match="undecodable"):
        load_words(db, CS36)
