"""Student model: shapes, stage taps, causality, incremental decoding, parameter counts."""

from __future__ import annotations

import pytest
import torch

from clipocr.train_student.model import (
    PRESETS,
    Student,
    StudentConfig,
    student_config,
)

LABELS = ["abc", "hello", "x", "0a9z"]


@pytest.fixture(scope="module")
def model() -> Student:
    torch.manual_seed(0)
    return Student(student_config("test")).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(len(LABELS), 3, 32, 128, generator=torch.Generator().manual_seed(1))


def test_shapes(model: Student, images: torch.Tensor) -> None:
    tgt_in, _ = model.charset.batch_targets(LABELS)
    out = model(images, tgt_in)
    b, t = tgt_in.shape
    d = model.cfg.enc_dim
    assert out.logits.shape == (b, t, model.charset.num_classes) == (4, 6, 37)
    assert [s.shape for s in out.enc_stages] == [(b, 129, d)] * 3
    assert out.enc_cls.shape == (b, d)
    assert [s.shape for s in out.dec_stages] == [(b, t, d)] * model.cfg.dec_depth


def test_stage_taps_are_the_residual_stream(model: Student, images: torch.Tensor) -> None:
    """Stages are read after blocks 1/2/3 (depth 4); running the rest reproduces timm's output."""
    tgt_in, _ = model.charset.batch_targets(LABELS)
    out = model(images, tgt_in)
    enc = model.encoder
    assert model.cfg.enc_taps == (1, 2, 3)
    x = out.enc_stages[0]
    torch.testing.assert_close(enc.blocks[1](x), out.enc_stages[1])
    final = enc.norm(enc.blocks[3](enc.blocks[2](out.enc_stages[1])))
    reference = enc.forward_features(images)  # timm's own path through all blocks
    torch.testing.assert_close(final, reference)
    torch.testing.assert_close(out.enc_cls, reference[:, 0])
    # the last decoder stage is what the classifier reads
    torch.testing.assert_close(model.head(out.dec_stages[-1]), out.logits)


def test_decoder_is_causal(model: Student, images: torch.Tensor) -> None:
    """Changing the input at position k leaves every output before k unchanged (and changes k)."""
    tgt_in, _ = model.charset.batch_targets(LABELS)
    changed = tgt_in.clone()
    changed[:, 3] = 5
    a, b = model(images, tgt_in), model(images, changed)
    for sa, sb in zip(a.dec_stages, b.dec_stages, strict=True):
        torch.testing.assert_close(sa[:, :3], sb[:, :3])
    assert not torch.allclose(a.logits[:, 3], b.logits[:, 3])


def test_generate_matches_teacher_forced_recomputation(
    model: Student, images: torch.Tensor
) -> None:
    ids, probs = model.generate(images)
    steps = model.cfg.max_len + 1
    assert ids.shape == probs.shape and ids.shape[0] == len(LABELS) and ids.shape[1] <= steps
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


def test_generate_stops_early_and_pads_with_eos() -> None:
    torch.manual_seed(0)
    model = Student(student_config("test")).eval()
    images = torch.randn(3, 3, 32, 128)
    with torch.no_grad():
        model.head.bias[model.charset.eos_id] = 100.0  # every sample ends at step 0
    ids, probs = model.generate(images)
    assert ids.shape == (3, 1) and (ids == model.charset.eos_id).all()
    assert model.read(images) == [("", pytest.approx(1.0))] * 3

    with torch.no_grad():
        model.head.bias.zero_()
        model.head.bias[model.charset.encode("k")[0]] = 100.0  # never ends
    ids, probs = model.generate(images)
    assert ids.shape == (3, model.cfg.max_len + 1)
    assert [text for text, _ in model.read(images)] == ["k" * 26] * 3


def test_generate_after_eos_is_eos_with_probability_one() -> None:
    """Sample 0 ends at step 0 while sample 1 goes on: row 0 then holds EOS with p = 1."""
    torch.manual_seed(0)
    model = Student(student_config("test")).eval()
    images = torch.randn(2, 3, 32, 128)
    eos, a_id = model.charset.eos_id, model.charset.encode("a")[0]
    bos = torch.full((2, 1), model.charset.bos_id)
    with torch.no_grad():
        h = model(images, bos).dec_stages[-1][:, 0]  # what the head reads at step 0
        v = h[0] - h[1]
        bias = -0.5 * float(v @ (h[0] + h[1]))  # v·h + bias > 0 for image 0, < 0 for image 1
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[eos], model.head.bias[eos] = v, bias
        model.head.weight[a_id], model.head.bias[a_id] = -v, -bias
    ids, probs = model.generate(images)
    assert ids.shape[1] >= 2
    assert ids[0, 0] == eos and (ids[0] == eos).all() and (probs[0, 1:] == 1.0).all()
    assert ids[1, 0] == a_id
    (text0, conf0), (text1, conf1) = model.read(images)
    assert text0 == "" and conf0 == pytest.approx(float(probs[0, 0]))
    assert text1.startswith("a") and conf1 == pytest.approx(float(probs[1].prod()))


@pytest.mark.parametrize("dec_layer", ["official", "standard"])
def test_generate_computes_one_new_position_per_step(dec_layer: str, images: torch.Tensor) -> None:
    """The K/V cache at work: each step feeds one query position through every layer."""
    torch.manual_seed(0)
    model = Student(student_config("test", dec_layer=dec_layer)).eval()
    seen: list[int] = []
    hook = model.dec_layers[-1].norm2.register_forward_hook(  # both layers' pre-MLP norm
        lambda _m, args, _out: seen.append(args[0].shape[1])
    )
    try:
        ids, _ = model.generate(images)
    finally:
        hook.remove()
    assert seen == [1] * ids.shape[1]


def test_forward_rejects_too_long_input(model: Student, images: torch.Tensor) -> None:
    too_long = torch.zeros(len(LABELS), model.cfg.max_len + 2, dtype=torch.long)
    with pytest.raises(ValueError, match="positions"):
        model(images, too_long)


def test_gradients_reach_encoder_and_decoder() -> None:
    torch.manual_seed(0)
    model = Student(student_config("test"))
    tgt_in, tgt_out = model.charset.batch_targets(LABELS)
    out = model(torch.randn(len(LABELS), 3, 32, 128), tgt_in)
    loss = torch.nn.functional.cross_entropy(
        out.logits.flatten(0, 1), tgt_out.flatten(), ignore_index=model.charset.pad_id
    )
    loss.backward()
    for name in ("encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight",
                 "tok_embed.weight", "pos_queries", "dec_layers.0.self_attn.in_proj_weight",
                 "dec_layers.0.norm_c.weight", "dec_layers.3.cross_attn.in_proj_weight",
                 "head.weight"):  # fmt: skip
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_presets_and_config_validation() -> None:
    assert student_config("small") == StudentConfig()
    assert student_config("small", charset="94").charset == "94"
    assert PRESETS["test"].enc_taps == (1, 2, 3)
    assert PRESETS["small"].enc_taps == (3, 6, 9)
    assert PRESETS["small"].num_tokens == 129
    assert StudentConfig.from_dict(PRESETS["tiny"].to_dict()) == PRESETS["tiny"]
    with pytest.raises(ValueError, match="preset"):
        student_config("huge")
    with pytest.raises(ValueError, match="enc_depth"):
        StudentConfig(enc_depth=10)
    with pytest.raises(ValueError, match="multiple"):
        StudentConfig(patch_size=(5, 8))
    with pytest.raises(ValueError, match="unknown StudentConfig keys"):
        StudentConfig.from_dict({"depth": 3})


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("tiny", 7_777_765), ("small", 30_890_917), ("base", 123_123_493)],
)
def test_parameter_counts(preset: str, expected: int) -> None:
    """Counted on the meta device (no memory, no init). The paper's ViT-S student is ≈ 31 M;
    the official decoder layer has 4 LayerNorms (one more than the standard layer: +2·dim per
    layer, 3,072 for `small`)."""
    with torch.device("meta"):
        model = Student(PRESETS[preset])
    n = model.num_params()
    print(f"{preset}: {n:,} parameters")
    assert n == expected
    if preset == "small":
        assert 0.9 * 31e6 < n < 1.1 * 31e6
        # The bulk is the 12 standard ViT-S blocks: qkv 443,520 + proj 147,840 + MLP 1,181,568
        # + 2 LayerNorms 1,536 = 1,774,464 each.
        assert sum(p.numel() for p in model.encoder.blocks.parameters()) == 12 * 1_774_464


def test_ctc_head_reads_grid_columns_and_collapses_repeats() -> None:
    """One CTC frame per token column; greedy decoding merges repeats and drops blanks (EOS)."""
    torch.manual_seed(0)
    model = Student(student_config("test", ctc_weight=1.0, patch_size=(32, 4))).eval()
    images = torch.randn(2, 3, 32, 128)
    tgt_in, _ = model.charset.batch_targets(["ab", "c"])
    out = model(images, tgt_in)
    assert out.ctc_logits is not None and out.ctc_logits.shape == (2, 32, 37)
    a, b = model.charset.encode("ab")
    blank = model.charset.eos_id
    frames = [a, a, blank, a, b, b] + [blank] * 26  # "a a _ a b b _ …" → "aab"
    logits = torch.full((2, 32, 37), -10.0)
    logits[0, torch.arange(32), torch.tensor(frames)] = 10.0
    logits[1, :, blank] = 10.0
    model.ctc_logits = lambda memory: logits  # type: ignore[method-assign]
    (text0, conf0), (text1, _) = model.read_ctc(images)
    assert (text0, text1) == ("aab", "")
    assert 0.99 < conf0 <= 1.0


def test_students_without_ctc_have_no_ctc_head() -> None:
    model = Student(student_config("test"))
    assert model.ctc_head is None
    assert (
        model(torch.randn(1, 3, 32, 128), torch.tensor([[model.charset.bos_id]])).ctc_logits is None
    )
    with pytest.raises(ValueError, match="no CTC head"):
        model.read_ctc(torch.randn(1, 3, 32, 128))


def test_additions_round_trip_and_stay_off_in_the_paper_preset() -> None:
    cfg = student_config("demo")
    assert (cfg.stem, cfg.dec_layer) != ("linear", "standard") or cfg.ctc_weight > 0
    assert StudentConfig.from_dict(cfg.to_dict()) == cfg
    paper = PRESETS["small"]
    assert (paper.stem, paper.ctc_weight, paper.dec_layer) == ("linear", 0.0, "official")
    for bad in ({"ctc_weight": -1.0}, {"dec_layer": "parallel"}):
        with pytest.raises(ValueError):
            student_config("test", **bad)


def test_ctc_align_adds_each_columns_character_index() -> None:
    """Greedy path "a a _ b _ b c" → indices 1 1 1 2 2 3 4: a new index at every character start
    (a repeat after a blank is a new character), the same for every row of the grid."""
    torch.manual_seed(0)
    cfg = student_config("test", ctc_weight=1.0, ctc_align=True, patch_size=(16, 16))
    model = Student(cfg).eval()  # grid 2 × 8 → 8 CTC frames
    a, b, c = model.charset.encode("abc")
    blank = model.charset.eos_id
    path = torch.tensor([a, a, blank, b, blank, b, c, blank])
    logits = torch.full((1, 8, 37), -10.0)
    logits[0, torch.arange(8), path] = 10.0
    model.ctc_logits = lambda memory: logits  # type: ignore[method-assign]
    memory = torch.randn(1, 1 + 16, cfg.enc_dim)
    added = model._aligned(memory) - memory
    want = model.align_embed(torch.tensor([1, 1, 1, 2, 2, 3, 4, 4] * 2))
    torch.testing.assert_close(added[0, 1:], want)
    assert float(added[0, 0].abs().sum()) == 0.0  # the class token is left alone
    with pytest.raises(ValueError, match="ctc_align"):
        student_config("test", ctc_align=True)


def test_ctc_align_generate_matches_teacher_forcing() -> None:
    torch.manual_seed(0)
    model = Student(student_config("test", ctc_weight=1.0, ctc_align=True)).eval()
    images = torch.randn(3, 3, 32, 128)
    ids, _ = model.generate(images)
    bos = torch.full((3, 1), model.charset.bos_id)
    with torch.no_grad():
        argmax = model(images, torch.cat([bos, ids[:, :-1]], dim=1)).logits.argmax(-1)
    for row in range(3):
        hits = (ids[row] == model.charset.eos_id).nonzero()
        end = int(hits[0]) + 1 if len(hits) else ids.shape[1]
        assert torch.equal(argmax[row, :end], ids[row, :end])
