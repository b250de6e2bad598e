"""Pretraining model pieces: CTC decoding and loss, lr schedule, weight-decay groups, config."""

from __future__ import annotations

import math

import pytest
import torch

from clipocr.cache_teacher.char_tokenizer import CharVocab
from clipocr.cache_teacher.pretrain_model import (
    CtcHead,
    ctc_greedy,
    ctc_loss,
    lr_at,
    param_groups,
    small_teacher_config,
)


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    # columns: a a blank a b b -> "aab"; chars "ab" (ids 1, 2; blank 0)
    seq = torch.tensor([1, 1, 0, 1, 2, 2])
    log_probs = torch.nn.functional.one_hot(seq, 3).float().unsqueeze(1)  # (T, B=1, C+1)
    assert ctc_greedy(log_probs, "ab") == ["aab"]


def test_ctc_loss_is_low_for_the_right_reading():
    vocab = CharVocab("ab")
    seq = torch.tensor([1, 0, 2, 2])  # "ab"
    log_probs = (torch.nn.functional.one_hot(seq, 3).float() * 20).log_softmax(-1).unsqueeze(1)
    assert ctc_loss(log_probs, ["ab"], vocab) < 1e-3 < ctc_loss(log_probs, ["ba"], vocab)


def test_ctc_head_reads_one_column_per_patch_column():
    head = CtcHead(width=8, num_chars=36, grid=(2, 32))
    out = head(torch.randn(3, 64, 8))
    assert out.shape == (32, 3, 37) and torch.allclose(out.exp().sum(-1), torch.ones(32, 3))


def test_lr_warms_up_linearly_then_decays_to_zero():
    assert lr_at(0.0, 0, 1.0, 4) == pytest.approx(0.25)
    assert lr_at(0.0, 3, 1.0, 4) == pytest.approx(1.0)
    assert lr_at(0.5, 10, 1.0, 4) == pytest.approx(0.5)
    assert lr_at(1.0, 10, 1.0, 4) == pytest.approx(0.0, abs=1e-12) == lr_at(2.0, 10, 1.0, 4)
    assert lr_at(0.25, 10, 2.0, 4) == pytest.approx(1.0 + math.cos(math.pi / 4))


def test_no_weight_decay_on_biases_gains_and_logit_scale():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.logit_scale = torch.nn.Parameter(torch.ones(()))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4  # linear bias, norm weight and bias, logit scale


def test_small_teacher_config_reads_columns_of_the_word_image():
    cfg = small_teacher_config("0123456789abcdefghijklmnopqrstuvwxyz", width=64, heads=2)
    vision, text = cfg["open_clip_config"]["vision_cfg"], cfg["open_clip_config"]["text_cfg"]
    assert vision["image_size"] == [32, 128] and vision["patch_size"] == [32, 4]
    assert vision["head_width"] == 32 and text["context_length"] == 27
    assert text["vocab_size"] == CharVocab("0123456789abcdefghijklmnopqrstuvwxyz").vocab_size
