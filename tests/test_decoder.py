"""Decoder layers: PARSeq's two-stream layer beside the standard one (causality, generation)."""

from __future__ import annotations

import pytest
import torch

from clipocr.train_student.decoder import DecoderLayer, TwoStreamLayer
from clipocr.train_student.model import Student, student_config

LABELS = ["abc", "hello", "x", "0a9z"]


@pytest.fixture(scope="module")
def model() -> Student:
    torch.manual_seed(0)
    return Student(student_config("test", dec_layer="two_stream")).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(len(LABELS), 3, 32, 128, generator=torch.Generator().manual_seed(1))


def test_layer_type_follows_the_config(model: Student) -> None:
    assert all(isinstance(layer, TwoStreamLayer) for layer in model.dec_layers)
    standard = Student(student_config("test", dec_layer="standard"))
    assert all(isinstance(layer, DecoderLayer) for layer in standard.dec_layers)


def test_two_stream_generate_matches_teacher_forced_argmax(
    model: Student, images: torch.Tensor
) -> None:
    ids, probs = model.generate(images)
    bos = torch.full((len(LABELS), 1), model.charset.bos_id)
    with torch.no_grad():
        full = model(images, torch.cat([bos, ids[:, :-1]], dim=1)).logits.softmax(-1)
    p_max, argmax = full.max(-1)
    eos = model.charset.eos_id
    for row in range(len(LABELS)):
        hits = (ids[row] == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else ids.shape[1]
        assert torch.equal(argmax[row, :end], ids[row, :end])
        torch.testing.assert_close(p_max[row, :end], probs[row, :end], atol=1e-5, rtol=1e-4)


def test_two_stream_query_t_sees_characters_up_to_t_only(
    model: Student, images: torch.Tensor
) -> None:
    """Changing input token k (the character predicted at k−1) leaves outputs < k unchanged."""
    tgt_in, _ = model.charset.batch_targets(LABELS)
    changed = tgt_in.clone()
    changed[:, 3] = 5
    a, b = model(images, tgt_in), model(images, changed)
    for sa, sb in zip(a.dec_stages, b.dec_stages, strict=True):
        torch.testing.assert_close(sa[:, :3], sb[:, :3])
    assert not torch.allclose(a.logits[:, 3], b.logits[:, 3])


def test_two_stream_taps_are_the_query_stream_through_the_final_norm(
    model: Student, images: torch.Tensor
) -> None:
    tgt_in, _ = model.charset.batch_targets(LABELS)
    out = model(images, tgt_in)
    assert len(out.dec_stages) == model.cfg.dec_depth
    torch.testing.assert_close(model.head(out.dec_stages[-1]), out.logits)
    # the last layer updates only the query stream: nobody reads its content output
    calls: list[int] = []
    last = model.dec_layers[-1]
    hook = last.mlp.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[1]))
    try:
        model(images, tgt_in)
    finally:
        hook.remove()
    assert calls == [tgt_in.shape[1]]
