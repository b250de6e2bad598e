from pathlib import Path

import pytest
import torch
from conftest import TINY_DIMS, WORDS, fake_store, make_shards

from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import TeacherStore
from clipocr.train_student.dataset import (
    DistillStream,
    StreamConfig,
    assign_shards,
    batches_to_skip,
)

CS = Charset.from_name("36")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    shards = make_shards(root, WORDS, shard_size=5)  # 4 shards: 5, 5, 5, 1
    return shards, fake_store(shards, root / "store")


def _all(stream: DistillStream) -> list[dict]:
    return list(stream)


def test_join_aligns_keys_and_pads_text(data) -> None:
    shards, store_dir = data
    store = TeacherStore(store_dir)
    stream = DistillStream(shards, CS, StreamConfig(batch_size=4, augment=False), store=store)
    batches = _all(stream)
    assert sum(len(b["labels"]) for b in batches) == len(WORDS)  # exact count per epoch
    assert sorted(lab for b in batches for lab in b["labels"]) == sorted(WORDS)
    expected = {k: f for name in store.shards() for k, f in store.iter_shard(name)}
    for batch in batches:
        assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (3, 32, 128)
        width = batch["tgt_in"].shape[1]
        assert batch["text_s1"].shape[1:] == (width, TINY_DIMS["text"])
        assert batch["image_s2"].shape[1:] == (17, TINY_DIMS["image"])
        for row, (key, label) in enumerate(zip(batch["keys"], batch["labels"])):
            assert batch["text_mask"][row].sum() == len(label) + 1
            assert torch.allclose(
                batch["text_s3"][row, : len(label) + 1].float(),
                torch.from_numpy(expected[key]["text_s3"]).half().float(),
            )
            assert not batch["text_s3"][row, len(label) + 1 :].any()  # padding is zero
            assert torch.allclose(
                batch["text_emb"][row].float(),
                torch.from_numpy(expected[key]["text_emb"]).half().float(),
            )


def test_without_store_has_no_targets(data) -> None:
    shards, _ = data
    batches = _all(DistillStream(shards, CS, StreamConfig(batch_size=16)))
    assert len(batches) == 1 and len(batches[0]["labels"]) == 16  # one worker: one full batch
    assert "text_s1" not in batches[0] and "text_mask" not in batches[0]


def test_missing_store_shard_is_named(data, tmp_path: Path) -> None:
    shards, _ = data
    partial = tmp_path / "partial"
    fake_store(shards, partial)
    import shutil

    shutil.rmtree(partial / "shard-000002")
    with pytest.raises(InputError, match="shard-000002"):
        DistillStream(shards, CS, StreamConfig(), store=TeacherStore(partial))


def test_store_from_other_shards_is_refused(data, tmp_path: Path) -> None:
    shards, _ = data
    other = make_shards(tmp_path, list(reversed(WORDS)), shard_size=5)
    store = TeacherStore(fake_store(other, tmp_path / "other_store"))
    stream = DistillStream(shards, CS, StreamConfig(augment=False), store=store)
    with pytest.raises(InputError, match="key|text rows"):
        _all(stream)


def test_charset_mismatch_is_refused(data) -> None:
    shards, _ = data
    with pytest.raises(InputError, match="charset 36"):
        DistillStream(shards, Charset.from_name("94"), StreamConfig())


def test_ranks_and_workers_get_disjoint_shards() -> None:
    names = [f"shard-{i:06d}" for i in range(10)]
    seen = []
    for rank in range(2):
        for worker in range(3):
            seen += assign_shards(
                names, seed=1, epoch=0, rank=rank, world=2, worker=worker, workers=3
            )
    assert sorted(seen) == names  # disjoint and complete
    assert assign_shards(names, 1, 0, 0, 2, 0, 3) != assign_shards(names, 1, 1, 0, 2, 0, 3) or (
        assign_shards(names, 1, 0, 0, 2, 1, 3) != assign_shards(names, 1, 1, 0, 2, 1, 3)
    )  # the order changes with the epoch


def test_epochs_reshuffle_deterministically(data) -> None:
    shards, _ = data
    stream = DistillStream(shards, CS, StreamConfig(batch_size=4, augment=False, shuffle_buffer=8))
    first = [b["keys"] for b in _all(stream)]
    assert [b["keys"] for b in _all(stream)] == first
    stream.set_epoch(1)
    assert [b["keys"] for b in _all(stream)] != first


def test_skip_resumes_exactly(data) -> None:
    shards, _ = data
    cfg = StreamConfig(batch_size=3, augment=True, shuffle_buffer=8, seed=3)
    stream = DistillStream(shards, CS, cfg)
    full = _all(stream)
    stream.set_epoch(0, skip_batches=2)
    rest = _all(stream)
    assert [b["keys"] for b in rest] == [b["keys"] for b in full[2:]]
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(rest, full[2:]))


def test_round_robin_skip_counts() -> None:
    assert batches_to_skip([3, 1, 2], 0) == [0, 0, 0]
    assert batches_to_skip([3, 1, 2], 4) == [2, 1, 1]
    assert batches_to_skip([3, 1, 2], 5) == [2, 1, 2]
    assert batches_to_skip([3, 1, 2], 6) == [3, 1, 2]


def test_multiworker_loader_matches_counts(data) -> None:
    shards, store_dir = data
    stream = DistillStream(shards, CS, StreamConfig(batch_size=4), store=TeacherStore(store_dir))
    stream.num_workers = 2
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    batches = list(loader)
    assert len(batches) == stream.batches_per_epoch()
    assert sorted(lab for b in batches for lab in b["labels"]) == sorted(WORDS)
