"""`teacher-pretrain` on a handful of rendered words: it learns, saves and loads as a teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipocr.cache_teacher.pretrain import (
    ctc_greedy,
    heldout_words,
    pretrain,
    unique_label_batches,
)
from clipocr.cache_teacher.teacher import TeacherConfig, load_teacher
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.synth import render_lmdb


@pytest.fixture(scope="module")
def words(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("words")
    cs = Charset.from_name("36")
    render_lmdb(root / "train", num=64, seed=5, charset=cs, progress=False)
    render_lmdb(root / "val", num=24, seed=6, charset=cs, progress=False)
    return root / "train", root / "val"


def test_pretrain_learns_and_saves_a_loadable_teacher(words, tmp_path):
    out = tmp_path / "teacher"
    summary = pretrain(
        words[0], out, val=words[1], steps=30, batch_size=16, lr=2e-3, warmup=3, seed=0,
        width=32, layers=4, embed_dim=24, log_every=1, progress=False, command="test run",
    )  # fmt: skip
    history = json.loads((out / "history.json").read_text())
    losses = [h["loss"] for h in history if h["kind"] == "train"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:3]) / 3
    assert summary["status"] == "finished" and summary["steps"] == 30

    state = load_file(str(out / "teacher.safetensors"))
    assert all(v.dtype == torch.float16 for v in state.values())
    assert not any("ctc" in k for k in state)  # the auxiliary head is not part of the teacher
    teacher = load_teacher(
        TeacherConfig(model=str(out / "teacher.json"), pretrained=str(out / "teacher.safetensors"))
    )
    assert teacher.dims == {"image_tokens": 33, "image": 32, "text": 32, "emb": 24}
    assert teacher.fingerprint()["tokenizer"]["type"] == "char"
    images = torch.randint(0, 256, (2, 3, 32, 128), dtype=torch.uint8)
    feats = teacher.features(images, ["word", "x" * 25])
    assert feats["image_s1"].shape == (2, 33, 32) and feats["text_s3"].shape == (2, 26, 32)

    report = (out / "TEACHER.md").read_text()
    assert "test run" in report and "finished" in report
    assert set(summary["loaded"]) == {f"top1@{summary['val_words']}"}
    assert json.loads((out / "pretrain_args.json").read_text())["seed"] == 0


def test_batches_never_repeat_a_label():
    labels = ["a", "b", "a", "c", "d", "a", "b", "e"]
    batches = unique_label_batches(labels, 4, torch.Generator().manual_seed(0))
    for _ in range(20):
        batch = next(batches)
        assert len(batch) == 4 and len({labels[i] for i in batch}) == 4


def test_heldout_words_are_unseen_and_distinct():
    images = torch.arange(6).view(6, 1)
    imgs, labels, dropped = heldout_words(images, ["a", "x", "y", "x", "b", "z"], {"a", "b"}, 5)
    assert labels == ["x", "y", "z"] and imgs.view(-1).tolist() == [1, 2, 5] and dropped == 2


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    # columns: a a blank a b b -> "aab"; chars "ab" (ids 1, 2; blank 0)
    seq = torch.tensor([1, 1, 0, 1, 2, 2])
    log_probs = torch.nn.functional.one_hot(seq, 3).float().unsqueeze(1)  # (T, B=1, C+1)
    assert ctc_greedy(log_probs, "ab") == ["aab"]
