from pathlib import Path

import numpy as np
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


# -- faults and bad input (issue 15) ----------------------------------------------------------
def _copy_store(store: Path, out: Path) -> Path:
    import shutil

    shutil.copytree(store, out)
    return out


def test_batch_count_leaves_out_samples_the_store_lists_missing(tmp_path: Path) -> None:
    """An undecodable image is in shards.json's count but not in the store: the epoch's count
    is what the join yields, or the trainer would wait for a batch that never comes."""
    from conftest import text_image, write_lmdb

    from clipocr.pipeline.shards import prepare_shards

    images = [text_image(w, "JPEG") for w in WORDS]
    images[3] = images[3][:100]
    db = write_lmdb(tmp_path / "db", list(zip(images, WORDS)))
    shards = tmp_path / "shards"
    prepare_shards([db], shards, CS, 8, progress=False)
    store = TeacherStore(fake_store(shards, tmp_path / "store"))
    assert store.missing("shard-000000") == ["shard-000000/000003"]
    stream = DistillStream(shards, CS, StreamConfig(batch_size=5), store=store)
    batches = _all(stream)
    assert stream.batches_per_epoch() == len(batches) == 3  # 7 + 8 samples, not 8 + 8
    assert sum(len(b["labels"]) for b in batches) == 15


def test_store_counts_that_do_not_fit_shards_json_are_refused(data, tmp_path: Path) -> None:
    shards, _ = data
    other = make_shards(tmp_path, WORDS, shard_size=4)  # 4 groups of 4, against 5, 5, 5, 1
    store = TeacherStore(fake_store(other, tmp_path / "other_store"))
    with pytest.raises(InputError, match="4 targets \\+ 0 missing, but shards.json counts 5"):
        DistillStream(shards, CS, StreamConfig(), store=store)


def test_a_damaged_chunk_names_its_shard(data, tmp_path: Path) -> None:
    """A chunk cut short (Blosc cannot decompress it, or its checksum fails): the error is one
    line that names the shard's group (the store's reader says so; here: it reaches the user)."""
    shards, store_dir = data
    damaged = _copy_store(store_dir, tmp_path / "store")
    chunk = damaged / "shard-000002" / "image_s2" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    stream = DistillStream(shards, CS, StreamConfig(augment=False), store=TeacherStore(damaged))
    with pytest.raises(InputError, match=f"{damaged / 'shard-000002'}") as err:
        _all(stream)
    assert "\n" not in str(err.value)


def test_manifest_dims_that_do_not_fit_the_arrays_are_refused(data, tmp_path: Path) -> None:
    import json

    shards, store_dir = data
    edited = _copy_store(store_dir, tmp_path / "store")
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["dims"]["image"] = 32
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"image_s1.*\(5, 17, 24\).*\(5, 17, 32\)"):
        DistillStream(shards, CS, StreamConfig(), store=TeacherStore(edited))  # not mid-epoch


def test_augmentation_starts_at_augment_from_epoch(data) -> None:
    """Epoch 0 of a stream with augment_from_epoch=1 is pixel-identical to an unaugmented one;
    epoch 1 is augmented."""
    shards, _ = data

    def images(cfg: StreamConfig, epoch: int) -> dict[str, torch.Tensor]:
        stream = DistillStream(shards, CS, cfg)
        stream.set_epoch(epoch)
        return {k: im for b in _all(stream) for k, im in zip(b["keys"], b["images"], strict=True)}

    late = StreamConfig(batch_size=4, augment=True, augment_from_epoch=1, shuffle_buffer=1)
    plain = StreamConfig(batch_size=4, augment=False, shuffle_buffer=1)
    clean, later = images(late, 0), images(late, 1)
    assert all(torch.equal(im, images(plain, 0)[k]) for k, im in clean.items())
    reference = images(plain, 1)
    assert any(not torch.equal(im, reference[k]) for k, im in later.items())


POSITIONS = 26  # text-table rows per label at context 27


def table_store(shard_dir: Path, out: Path, pad: str = "masked", relabel=None) -> dict:
    """A table-layout store for `shard_dir`: one text-table row per distinct label (random
    features, zero past EOT when masked), image taps per sample. Returns label → table feats.
    `relabel` maps a sample's label to the one its reference points at (to fake a bad store)."""
    import numpy as np

    from clipocr.cache_teacher.label_table import shard_labels
    from clipocr.pipeline.shards import shard_paths
    from clipocr.pipeline.teacher_store import StoreSpec, TeacherStoreWriter, open_table_part

    spec = StoreSpec(teacher={"checksum": "fake"}, preprocessing={"image_size": [32, 128]},
                     dims=TINY_DIMS, text_layout="table", text_pad=pad)  # fmt: skip
    writer = TeacherStoreWriter(out, spec)
    per_shard = {p: shard_labels(p) for p in shard_paths(shard_dir)}
    distinct = sorted({s for labels in per_shard.values() for s in labels.values()})
    rng = np.random.default_rng(0)
    b, d = len(distinct), TINY_DIMS["text"]
    feats = {f"text_s{i}": rng.standard_normal((b, POSITIONS, d)).astype(np.float32)
             for i in (1, 2, 3)}  # fmt: skip
    feats["text_emb"] = rng.standard_normal((b, TINY_DIMS["emb"])).astype(np.float32)
    if pad == "masked":
        valid = np.arange(POSITIONS)[None] < np.array([len(s) + 1 for s in distinct])[:, None]
        for i in (1, 2, 3):
            feats[f"text_s{i}"] *= valid[..., None]
    with open_table_part(writer, POSITIONS, b) as part:
        part.append(distinct, feats)
        part.commit()
    for path, labels in per_shard.items():
        keys = list(labels)
        if relabel:
            labels = {k: relabel.get(v, v) for k, v in labels.items()}
        shape = (len(keys), TINY_DIMS["image_tokens"], TINY_DIMS["image"])
        img = {f"image_s{i}": rng.standard_normal(shape).astype(np.float32) for i in (1, 2, 3)}
        with writer.open_shard(path.stem, expected=len(keys), labels=labels) as group:
            group.append(keys, img)
            group.commit()
    return {s: {k: v[i] for k, v in feats.items()} for i, s in enumerate(distinct)}


@pytest.mark.parametrize("pad", ["masked", "align"])
def test_table_store_streams_each_samples_label_rows(data, tmp_path: Path, pad: str) -> None:
    """A table-layout store gives the same batches as a ragged one (masked), or, cached with
    --text-pad align, every decoder position of the label's row, all valid (the stream follows
    the store by default)."""
    shards, _ = data
    table = table_store(shards, tmp_path / "store", pad)
    store = TeacherStore(tmp_path / "store")
    batches = _all(DistillStream(shards, CS, StreamConfig(batch_size=4, augment=False), store))
    assert sorted(lab for b in batches for lab in b["labels"]) == sorted(WORDS)
    for batch in batches:
        width = batch["tgt_in"].shape[1]
        for row, label in enumerate(batch["labels"]):
            n = width if pad == "align" else len(label) + 1
            assert batch["text_mask"][row].sum() == n
            want = torch.from_numpy(table[label]["text_s2"][:n]).half()
            assert torch.equal(batch["text_s2"][row, :n], want)
            assert not batch["text_s2"][row, n:].any()
            assert torch.equal(
                batch["text_emb"][row], torch.from_numpy(table[label]["text_emb"]).half()
            )
    if pad == "masked":
        with pytest.raises(InputError, match="--text-pad align"):
            DistillStream(shards, CS, StreamConfig(batch_size=4, text_pad="align"), store)


def test_a_reference_to_another_label_is_refused(data, tmp_path: Path) -> None:
    shards, _ = data
    table_store(shards, tmp_path / "store", relabel={"hello": "world"})
    stream = DistillStream(shards, CS, StreamConfig(batch_size=4, augment=False),
                           TeacherStore(tmp_path / "store"))  # fmt: skip
    with pytest.raises(InputError, match="refers to text targets of 'world', its label is 'hello'"):
        _all(stream)


def test_a_format_1_ragged_store_still_trains(data, tmp_path: Path) -> None:
    """Stores cached before the text table (format 1, ragged text per shard) keep working."""
    import json
    import shutil

    shards, store_dir = data
    old = tmp_path / "old"
    shutil.copytree(store_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format"] = "clipocr-teacher-store/1"
    del manifest["text_layout"], manifest["text_pad"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    new = _all(DistillStream(shards, CS, StreamConfig(batch_size=4, augment=False),
                             TeacherStore(store_dir)))  # fmt: skip
    got = _all(DistillStream(shards, CS, StreamConfig(batch_size=4, augment=False),
                             TeacherStore(old)))  # fmt: skip
    assert [b["keys"] for b in got] == [b["keys"] for b in new]
    for a, b in zip(got, new, strict=True):
        assert torch.equal(a["text_s1"], b["text_s1"]) and torch.equal(
            a["text_mask"], b["text_mask"]
        )


# -- issue 22: compact buffers, resume by counts, mixing across shards ------------------------
def test_resume_with_a_store_is_exact_and_reads_no_chunk_of_passed_shards(data, monkeypatch):
    """Skipped batches are passed by count: shards whose samples were all trained on are never
    opened (no store chunk read, no image decoded), and the batches after are bit-identical."""
    from clipocr.pipeline.teacher_store.streams import ChunkStream

    shards, store_dir = data
    cfg = StreamConfig(batch_size=5, augment=True, shuffle_buffer=1, open_shards=1, seed=2)
    read: set[str] = set()
    real = ChunkStream._read

    def counted(self, i: int) -> None:
        read.add(self.where.split("/")[-2])  # the group of the array
        real(self, i)

    monkeypatch.setattr(ChunkStream, "_read", counted)
    stream = DistillStream(shards, CS, cfg, store=TeacherStore(store_dir))
    read.clear()
    full = _all(stream)
    assert len(read) == 4
    read.clear()
    stream.set_epoch(0, skip_batches=2)
    rest = _all(stream)
    assert len(read) == 2  # the two shards of the skipped batches were never read
    assert [b["keys"] for b in rest] == [b["keys"] for b in full[2:]]
    for a, b in zip(rest, full[2:], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("images", "image_s1", "text_s3", "text_emb"))


def test_resume_mid_buffer_across_open_shards_is_exact(data) -> None:
    shards, store_dir = data
    cfg = StreamConfig(batch_size=3, augment=False, shuffle_buffer=6, open_shards=3, seed=5)
    stream = DistillStream(shards, CS, cfg, store=TeacherStore(store_dir))
    full = _all(stream)
    for skip in (1, 3):
        stream.set_epoch(0, skip_batches=skip)
        rest = _all(stream)
        assert [b["keys"] for b in rest] == [b["keys"] for b in full[skip:]]
        assert all(torch.equal(a["text_s2"], b["text_s2"]) for a, b in zip(rest, full[skip:]))


def test_a_batch_draws_from_several_open_shards(data) -> None:
    shards, _ = data

    def shards_per_batch(open_shards: int) -> list[int]:
        cfg = StreamConfig(batch_size=4, augment=False, shuffle_buffer=1, open_shards=open_shards)
        batches = _all(DistillStream(shards, CS, cfg))
        return [len({k.split("/")[0] for k in b["keys"]}) for b in batches]

    assert shards_per_batch(1)[0] == 1
    assert shards_per_batch(4)[0] == 4  # round robin over four open shards


def test_buffered_samples_hold_compact_copies(data) -> None:
    """A sample waiting in the buffer holds its own rows in the store's dtype, not a view
    that would keep a whole decoded chunk alive."""
    shards, store_dir = data
    stream = DistillStream(shards, CS, StreamConfig(augment=False), store=TeacherStore(store_dir))
    sample = next(stream._joined(list(stream.counts)))
    for tap in ("image_s1", "text_s2", "text_emb"):
        x = sample["feats"][tap]
        assert x.dtype == np.float16 and (x.base is None or x.base.nbytes == x.nbytes), tap
