"""The CLIP teacher wrapper on tiny random open_clip models (CPU, no weights downloaded)."""

from __future__ import annotations

import copy
import json
import shutil
import string
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from torch import nn

from clipocr.cache_teacher.char_tokenizer import BpeChars, CharVocab, tokenizer_from_spec
from clipocr.cache_teacher.teacher import (
    ImageTaps,
    Teacher,
    TeacherConfig,
    adapt_pos_embed,
    load_teacher,
    stage_blocks,
    store_spec,
    to_storage_form,
)
from clipocr.cache_teacher.weights import ModelSpec
from clipocr.pipeline.charset import CHARSETS
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store import TeacherStore, TeacherStoreWriter

CHARS36 = CHARSETS["36"]
LABELS = ["a", "hello", "0123456789", "zz9", "abcdefghijklmnopqrstuvwxy"]  # lengths 1..25

TINY_224 = {
    "embed_dim": 48,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 64, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4},
}


def write_json(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[str, str]:
    """(config JSON, safetensors weights) of a tiny random ViT-B/16-shaped CLIP."""
    root = tmp_path_factory.mktemp("tiny")
    config = write_json(root / "tiny.json", TINY_224)
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_224)
    weights = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return config, str(weights)


@pytest.fixture(scope="module")
def teacher(tiny) -> Teacher:
    return load_teacher(TeacherConfig(model=tiny[0], pretrained=tiny[1], form="raw"))


def images(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 128), generator=gen, dtype=torch.uint8)


# -- tokenisation ---------------------------------------------------------------------------------


def test_bpe_one_token_per_symbol_matches_spaced_text():
    tok = BpeChars(CHARS36)
    simple = open_clip.SimpleTokenizer()
    assert len(set(tok.table.values())) == 36  # 36 distinct single tokens
    for word in ["0123456789", "analysis", "a1b2c3", string.ascii_lowercase]:
        assert tok.char_ids(word) == simple.encode(" ".join(word))
    ids = tok.encode(["hello"], 27)[0].tolist()
    assert ids[:7] == [simple.sot_token_id, *simple.encode("h e l l o"), simple.eot_token_id]
    assert ids[7:] == [0] * 20


def test_bpe_case_folds_and_covers_printable_ascii():
    tok = BpeChars(CHARSETS["94"])
    assert tok.char_ids("AbC") == tok.char_ids("abc")
    simple = open_clip.SimpleTokenizer()  # built once: it reads its 49k-merge vocabulary
    assert all(len(simple.encode(c)) == 1 for c in CHARSETS["94"])


def test_char_vocab_ids_and_length_25():
    vocab = CharVocab(CHARS36)
    assert (vocab.sot_id, vocab.eot_id, vocab.vocab_size) == (37, 38, 39)
    assert vocab.char_ids("09az") == [1, 10, 11, 36]
    row = vocab.encode(["x" * 25], 27)[0]
    assert row[0] == 37 and row[26] == 38 and (row[1:26] == 34).all()
    assert int(row.argmax()) == 26  # open_clip pools the text tower at argmax(ids)
    with pytest.raises(ValueError, match="context length"):
        vocab.encode(["x" * 26], 27)
    with pytest.raises(ValueError, match="no token"):
        vocab.char_ids("A")
    with pytest.raises(ValueError, match="no single token"):
        tokenizer_from_spec({"type": "char", "chars": "abc"}, CHARS36)


# -- positional embedding -------------------------------------------------------------------------


def test_pos_embed_identity_when_grid_unchanged():
    pos = torch.randn(1 + 2 * 8, 16)
    for mode in ("crop", "interpolate"):
        assert torch.equal(adapt_pos_embed(pos, (2, 8), (2, 8), mode), pos)


def test_pos_embed_crop_is_top_left_window():
    pos = torch.randn(1 + 14 * 14, 16)
    out = adapt_pos_embed(pos, (14, 14), (2, 8), "crop")
    assert out.shape == (17, 16)
    expected = [0, *range(1, 9), *range(15, 23)]  # class token, rows 0 and 1, columns 0..7
    assert torch.equal(out, pos[expected])
    out32 = adapt_pos_embed(torch.randn(1 + 7 * 7, 8), (7, 7), (1, 4), "crop")
    assert out32.shape == (5, 8)
    with pytest.raises(ValueError, match="cannot crop"):
        adapt_pos_embed(pos, (14, 14), (2, 16), "crop")


def test_pos_embed_interpolate_shapes_and_values():
    pos = torch.randn(1 + 14 * 14, 16)
    out = adapt_pos_embed(pos, (14, 14), (2, 8), "interpolate")
    assert out.shape == (17, 16)
    assert torch.equal(out[0], pos[0])  # class token untouched
    assert not torch.allclose(out, adapt_pos_embed(pos, (14, 14), (2, 8), "crop"))
    # a grid whose value varies linearly along the width is resampled, not cropped
    ramp = torch.arange(14.0).repeat(14)[:, None].expand(-1, 4)
    out = adapt_pos_embed(torch.cat([torch.zeros(1, 4), ramp]), (14, 14), (1, 4), "interpolate")
    cols = out[1:, 0]
    assert out.shape == (5, 4) and (cols.diff() > 2).all() and cols[0] < 3 and cols[-1] > 10


# -- taps -----------------------------------------------------------------------------------------


def hook_outputs(blocks) -> tuple[list, list]:
    outs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in blocks]
    return outs, handles


def test_image_taps_equal_manual_forward_crop(teacher):
    visual = teacher.model.visual
    x = images(3)
    feats = teacher.features(x, ["ab", "cd", "ef"])
    # manual re-computation: class token + cropped pos-embed, then open_clip's own transformer
    norm = (x.float() / 255 - torch.tensor(teacher.mean).view(1, 3, 1, 1)) / torch.tensor(
        teacher.std
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = visual.conv1(norm).flatten(2).transpose(1, 2)
        cls_tok = visual.class_embedding.expand(3, 1, -1)
        pos = visual.positional_embedding[[0, *range(1, 9), *range(15, 23)]]
        emb = visual.ln_pre(torch.cat([cls_tok, tokens], 1) + pos)
        outs, handles = hook_outputs(visual.transformer.resblocks)
        visual.transformer(emb)
        for h in handles:
            h.remove()
    assert stage_blocks(4) == (1, 2, 3) and teacher.image_taps == (1, 2, 3)
    for i in range(3):
        assert feats[f"image_s{i + 1}"].shape == (3, 17, 64)
        torch.testing.assert_close(feats[f"image_s{i + 1}"], outs[i], rtol=1e-5, atol=1e-5)


def test_image_taps_equal_open_clip_intermediates_native_grid(tmp_path):
    """A model trained at 32×128 (grid 2×8): taps equal open_clip's `forward_intermediates`."""
    cfg = json.loads(json.dumps(TINY_224))
    cfg["vision_cfg"]["image_size"] = [32, 128]
    cfg["vision_cfg"]["layers"] = 8
    t = load_teacher(TeacherConfig(model=write_json(tmp_path / "m.json", cfg), form="raw"))
    x = images(2, seed=1)
    feats = t.features(x, ["a", "b"])
    from clipocr.pipeline.preprocess import normalize

    with torch.no_grad():
        ref = t.model.visual.forward_intermediates(
            normalize(x, t.mean, t.std),
            indices=[1, 3, 5],  # 0-based: after blocks 2, 4, 6 of 8
            output_fmt="NLC",
            output_extra_tokens=True,
            intermediates_only=True,
        )
    for i in range(3):
        full = torch.cat([ref["image_intermediates_prefix"][i], ref["image_intermediates"][i]], 1)
        torch.testing.assert_close(feats[f"image_s{i + 1}"], full, rtol=1e-5, atol=1e-5)


def test_text_taps_and_embedding_equal_manual_forward_at_77(teacher):
    tok = teacher.tokenizer
    feats = teacher.features(images(len(LABELS)), LABELS)
    ids77 = tok.encode(LABELS, 77)
    with torch.no_grad():
        outs, handles = hook_outputs(teacher.model.transformer.resblocks)
        emb77 = teacher.model.encode_text(ids77)
        for h in handles:
            h.remove()
    torch.testing.assert_close(feats["text_emb"], emb77, rtol=1e-5, atol=1e-5)
    assert feats["text_lengths"].tolist() == [len(s) + 1 for s in LABELS]
    assert feats["text_s1"].shape == (len(LABELS), 26, 32)
    for i in range(3):
        tap = feats[f"text_s{i + 1}"]
        for row, label in enumerate(LABELS):
            n = len(label) + 1  # c1..cL, EOT (SOT dropped)
            torch.testing.assert_close(tap[row, :n], outs[i][row, 1 : n + 1], rtol=1e-5, atol=1e-5)
            assert (tap[row, n:] == 0).all()


def test_table_features_keep_every_position_as_the_official_code_computes_them(teacher):
    """Text-table rows: c1..cL, EOT equal `features`' rows; ``align`` keeps the pad positions as
    the official code computes them — the tower at the batch's width on ``SOT, c1..cL, EOT,
    pad…``, SOT dropped (causal: the full context gives the same rows) — ``masked`` zeroes them.
    `ImageTaps` (how table-layout shards are cached) gives the image taps alone."""
    x = images(len(LABELS))
    feats = teacher.features(x, LABELS)
    masked = teacher.table_features(LABELS, "masked")
    align = teacher.table_features(LABELS, "align")
    assert masked["text_s1"].shape == (len(LABELS), teacher.text_positions, 32)
    width = max(len(s) for s in LABELS) + 1
    lengths = torch.tensor([len(s) for s in LABELS])
    taps, _ = teacher.text_stages(teacher.tokenizer.encode(LABELS, width + 1), lengths)
    official = to_storage_form({f"text_s{i}": t[:, 1:] for i, t in enumerate(taps, 1)},
                               teacher.cfg.form)  # fmt: skip
    for tap in ("text_s1", "text_s2", "text_s3"):
        torch.testing.assert_close(align[tap][:, :width], official[tap], rtol=1e-5, atol=1e-5)
        for row, label in enumerate(LABELS):
            n = len(label) + 1
            torch.testing.assert_close(masked[tap][row, :n], feats[tap][row, :n])
            torch.testing.assert_close(align[tap][row, :n], feats[tap][row, :n])
            assert (masked[tap][row, n:] == 0).all()
            assert (align[tap][row, n:] != 0).any() or n == teacher.text_positions
    torch.testing.assert_close(align["text_emb"], feats["text_emb"])
    with pytest.raises(ValueError, match="text_pad"):
        teacher.table_features(LABELS, "pad")
    image_only = ImageTaps(teacher).features(x, LABELS)
    assert sorted(image_only) == ["image_s1", "image_s2", "image_s3"]
    torch.testing.assert_close(image_only["image_s2"], feats["image_s2"])
    assert next(ImageTaps(teacher).parameters()).device == next(teacher.parameters()).device


def test_context_27_equals_context_77(tiny):
    t27 = load_teacher(TeacherConfig(model=tiny[0], pretrained=tiny[1], form="raw"))
    t77 = load_teacher(
        TeacherConfig(model=tiny[0], pretrained=tiny[1], form="raw", context_length=77)
    )
    x = images(len(LABELS))
    a, b = t27.features(x, LABELS), t77.features(x, LABELS)
    for key in ("text_s1", "text_s2", "text_s3", "text_emb", "image_s3"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_interpolate_mode_changes_image_taps_only(tiny):
    crop = load_teacher(TeacherConfig(model=tiny[0], pretrained=tiny[1], form="raw"))
    interp = load_teacher(
        TeacherConfig(model=tiny[0], pretrained=tiny[1], form="raw", pos_embed="interpolate")
    )
    x = images(2)
    a, b = crop.features(x, ["ab", "c"]), interp.features(x, ["ab", "c"])
    assert a["image_s1"].shape == b["image_s1"].shape == (2, 17, 64)
    assert not torch.allclose(a["image_s1"], b["image_s1"])
    torch.testing.assert_close(a["text_emb"], b["text_emb"])


# -- storage form, description --------------------------------------------------------------------


def test_normalised_form(tiny, teacher):
    norm = load_teacher(TeacherConfig(model=tiny[0], pretrained=tiny[1]))
    x = images(len(LABELS))
    raw, feats = teacher.features(x, LABELS), norm.features(x, LABELS)
    assert all(v.dtype == torch.float32 for k, v in feats.items() if k != "text_lengths")
    for key in ("image_s1", "image_s3"):
        assert torch.allclose(feats[key].mean(-1), torch.zeros(()), atol=1e-5)
        assert torch.allclose(feats[key].var(-1, unbiased=False), torch.ones(()), atol=1e-3)
        ref = F.layer_norm(raw[key], raw[key].shape[-1:], eps=1e-5)
        torch.testing.assert_close(feats[key], ref)
    assert torch.allclose(feats["text_emb"].norm(dim=-1), torch.ones(len(LABELS)))
    assert (feats["text_s2"][0, 2:] == 0).all()  # padding of the 1-char label stays zero
    assert feats["text_s2"][0, :2].var(-1, unbiased=False).sub(1).abs().max() < 1e-3
    redo = to_storage_form(raw, "normalised")
    torch.testing.assert_close(redo["text_s3"], feats["text_s3"])
    with pytest.raises(ValueError):
        to_storage_form(raw, "int8")


def test_dims_and_fingerprint(teacher, tiny):
    import hashlib

    assert teacher.dims == {"image_tokens": 17, "image": 64, "text": 32, "emb": 48}
    fp = teacher.fingerprint()
    assert fp["weights_sha256"] == hashlib.sha256(Path(tiny[1]).read_bytes()).hexdigest()
    assert fp["config_sha256"] == hashlib.sha256(Path(tiny[0]).read_bytes()).hexdigest()
    assert (fp["pos_embed"], fp["context_length"], fp["grid"]) == ("crop", 27, [2, 8])
    assert fp["tokenizer"]["type"] == "bpe-chars"
    assert fp["mean"] == list(open_clip.OPENAI_DATASET_MEAN)


def test_features_reject_wrong_input(teacher):
    with pytest.raises(ValueError, match="uint8"):
        teacher.features(images(1).float(), ["a"])
    with pytest.raises(ValueError, match="labels"):
        teacher.features(images(2), ["a"])


# -- loading --------------------------------------------------------------------------------------


def test_weights_are_loaded_not_random(tiny, teacher):
    torch.manual_seed(123)
    other = load_teacher(TeacherConfig(model=tiny[0], form="raw"))  # random init, no weights
    x = images(1)
    assert not torch.allclose(
        other.features(x, ["ab"])["text_emb"], teacher.features(x, ["ab"])["text_emb"]
    )
    again = load_teacher(TeacherConfig(model=tiny[0], pretrained=tiny[1], form="raw"))
    torch.testing.assert_close(
        again.features(x, ["ab"])["text_emb"], teacher.features(x, ["ab"])["text_emb"]
    )


def test_torch_checkpoint_with_module_prefix_loads(tiny, tmp_path, teacher):
    from safetensors.torch import load_file

    state = {f"module.{k}": v for k, v in load_file(tiny[1]).items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    t = load_teacher(TeacherConfig(model=tiny[0], pretrained=str(path), form="raw"))
    x = images(1)
    torch.testing.assert_close(
        t.features(x, ["q"])["image_s2"], teacher.features(x, ["q"])["image_s2"]
    )


def test_missing_corrupt_and_unknown_weights_are_clear_errors(tiny, tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(open_clip, "download_pretrained", no_download)
    with pytest.raises(InputError, match="no such weights file"):
        load_teacher(TeacherConfig(model=tiny[0], pretrained=str(tmp_path / "nope.safetensors")))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot load teacher weights"):
        load_teacher(TeacherConfig(model=tiny[0], pretrained=str(bad)))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(InputError, match="cannot load teacher weights"):
        load_teacher(TeacherConfig(model=tiny[0], pretrained=str(wrong)))
    with pytest.raises(InputError, match="neither a weights file nor a pretrained tag"):
        load_teacher(TeacherConfig(model="ViT-B-16", pretrained="no-such-tag"))
    with pytest.raises(InputError, match="no such model config"):
        load_teacher(TeacherConfig(model=str(tmp_path / "missing.json")))
    with pytest.raises(InputError, match="unknown open_clip model"):
        load_teacher(TeacherConfig(model="ViT-Nope-1"))
    with pytest.raises(InputError, match="context length"):
        load_teacher(TeacherConfig(model=tiny[0], context_length=20))


def test_char_vocab_teacher_config(tmp_path):
    """The clipocr teacher format carries its char tokenizer and mean/std beside the config."""
    cfg = json.loads(json.dumps(TINY_224))
    cfg["vision_cfg"]["image_size"] = [32, 128]
    cfg["text_cfg"].update(context_length=27, vocab_size=39)
    wrapped = {
        "open_clip_config": cfg,
        "tokenizer": {"type": "char", "chars": CHARS36},
        "preprocess": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }
    t = load_teacher(TeacherConfig(model=write_json(tmp_path / "t.json", wrapped)))
    assert t.mean == (0.5,) * 3 and t.std == (0.25,) * 3
    assert t.fingerprint()["tokenizer"] == {"type": "char", "chars": CHARS36}
    feats = t.features(images(2), ["abc", "x" * 25])
    assert feats["text_s1"].shape == (2, 26, 32) and feats["text_emb"].shape == (2, 48)
    with torch.no_grad():
        ref = t.model.encode_text(t.tokenizer.encode(["abc", "x" * 25], 27))
    torch.testing.assert_close(feats["text_emb"], F.normalize(ref, dim=-1))


# -- activation: OpenAI's weights mean QuickGELU ---------------------------------------------------


def save_state(model: torch.nn.Module, path: Path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def save_openai_archive(model: torch.nn.Module, path: Path, torchscript: bool) -> str:
    """`model`'s weights as OpenAI ships CLIP: a TorchScript archive whose state dict also holds
    input_resolution / context_length / vocab_size; or that state dict saved as a plain dict."""
    m = copy.deepcopy(model)
    del m.context_length, m.vocab_size  # plain ints on open_clip's CLIP; entries in OpenAI's
    for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        m.register_buffer(name, torch.tensor(value))
    if torchscript:
        with warnings.catch_warnings():  # tracer and deprecation chatter
            warnings.simplefilter("ignore")
            example = {"encode_image": torch.zeros(1, 3, 224, 224)}
            archive = torch.jit.trace_module(m.eval(), example, check_trace=False)
            torch.jit.save(archive, str(path))
    else:
        torch.save(m.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[nn.Module, Teacher]:
    """A tiny random model built with QuickGELU, and the teacher made from it in memory."""
    cfg = {**TINY_224, "quick_gelu": True}
    torch.manual_seed(1)
    model = open_clip.CLIP(**cfg).eval()
    spec = ModelSpec(copy.deepcopy(cfg))
    ref = Teacher(copy.deepcopy(model), tokenizer_from_spec(None, CHARS36), TeacherConfig(), spec)
    return model, ref.eval().requires_grad_(False)


def assert_same_features(a: Teacher, b: Teacher) -> None:
    x = images(len(LABELS), seed=3)
    fa, fb = a.features(x, LABELS), b.features(x, LABELS)
    assert set(fa) == set(fb)
    for key in fa:
        assert torch.equal(fa[key], fb[key]), key


def uses_quick_gelu(t: Teacher) -> bool:
    acts = [b.mlp.gelu for b in t.model.visual.transformer.resblocks]
    acts += [b.mlp.gelu for b in t.model.transformer.resblocks]
    return all(isinstance(a, QuickGELU) for a in acts)


@pytest.mark.parametrize("torchscript", [True, False], ids=["torchscript", "openai-keys"])
def test_openai_checkpoint_from_a_local_file_builds_quick_gelu(tiny, quick, tmp_path, torchscript):
    """The README recipe: a plain (GELU) model name + OpenAI's weights file → QuickGELU."""
    model, ref = quick
    path = save_openai_archive(model, tmp_path / "ViT-openai.pt", torchscript)
    t = load_teacher(TeacherConfig(model=tiny[0], pretrained=path))
    assert uses_quick_gelu(t)
    fp = t.fingerprint()
    assert fp["activation"] == "quick_gelu" and "OpenAI checkpoint" in fp["activation_source"]
    assert_same_features(t, ref)


def test_quickgelu_model_name_is_honoured(tiny, quick, tmp_path, monkeypatch, caplog):
    """``<name>-quickgelu`` builds QuickGELU from a plain state dict (no OpenAI marks in it);
    the plain name builds GELU (what the config says) and differs."""
    model, ref = quick
    registry = {"Tiny": copy.deepcopy(TINY_224)}
    monkeypatch.setattr(open_clip, "get_model_config", lambda n: copy.deepcopy(registry.get(n)))
    weights = save_state(model, tmp_path / "w.safetensors")
    named = load_teacher(TeacherConfig(model="Tiny-quickgelu", pretrained=weights))
    assert uses_quick_gelu(named) and named.fingerprint()["activation"] == "quick_gelu"
    assert_same_features(named, ref)

    # a plain name whose OpenAI tag says QuickGELU: GELU as configured, with a warning
    monkeypatch.setattr(
        open_clip,
        "get_pretrained_cfg",
        lambda m, tag: {"quick_gelu": True} if tag == "openai" else {},
    )
    plain = load_teacher(TeacherConfig(model="Tiny", pretrained=weights))
    assert not uses_quick_gelu(plain) and plain.fingerprint()["activation"] == "gelu"
    assert "name the model Tiny-quickgelu" in caplog.text
    x = images(2)
    assert not torch.equal(
        plain.features(x, ["ab", "c"])["image_s3"], ref.features(x, ["ab", "c"])["image_s3"]
    )
    # ...and the architecture is the same content whether named or given as a JSON file
    assert (
        plain.fingerprint()["architecture_sha256"]
        == load_teacher(TeacherConfig(model=tiny[0])).fingerprint()["architecture_sha256"]
    )


def test_store_of_the_other_activation_is_refused(quick, tmp_path, monkeypatch):
    model, _ = quick
    monkeypatch.setattr(open_clip, "get_model_config", lambda n: copy.deepcopy(TINY_224))
    weights = save_state(model, tmp_path / "w.safetensors")
    gelu = load_teacher(TeacherConfig(model="Tiny", pretrained=weights))
    quick_t = load_teacher(TeacherConfig(model="Tiny-quickgelu", pretrained=weights))
    root = tmp_path / "store"
    TeacherStoreWriter(root, store_spec(gelu, "zstd"))
    assert TeacherStore(root).manifest["teacher"]["activation"] == "gelu"
    with pytest.raises(InputError, match=r"teacher\.activation: store 'gelu' != 'quick_gelu'"):
        TeacherStoreWriter(root, store_spec(quick_t, "zstd"))
    with pytest.raises(InputError, match="activation"):
        TeacherStore(root).check_compatible({"teacher": store_spec(quick_t, "zstd").teacher})


# -- identity: by content, never by path -----------------------------------------------------------


def test_teacher_identity_is_content_not_path(tiny, tmp_path):
    first = load_teacher(TeacherConfig(model=tiny[0], pretrained=tiny[1]))
    root = tmp_path / "store"
    TeacherStoreWriter(root, store_spec(first, "zstd"))
    # a copy of the same files, and another spelling of the original paths: the same teacher
    copies = tmp_path / "copy"
    copies.mkdir()
    config, weights = (shutil.copy(p, copies / Path(p).name) for p in tiny)
    odd = Path(tiny[0]).parent / ".." / Path(tiny[0]).parent.name
    for model, pretrained in ((config, weights), (odd / "tiny.json", odd / "tiny.safetensors")):
        other = load_teacher(TeacherConfig(model=str(model), pretrained=str(pretrained)))
        TeacherStoreWriter(root, store_spec(other, "zstd"))  # not refused
        TeacherStore(root).check_compatible({"teacher": store_spec(other, "zstd").teacher})
    manifest = TeacherStore(root).manifest
    assert manifest["source"]["model"] == tiny[0] and manifest["source"]["pretrained"] == tiny[1]
    assert tiny[0] not in json.dumps(manifest["teacher"])  # no path in what is compared
    # different weights: refused
    torch.manual_seed(7)
    different = save_state(open_clip.CLIP(**TINY_224), tmp_path / "other.safetensors")
    changed = load_teacher(TeacherConfig(model=tiny[0], pretrained=different))
    with pytest.raises(InputError, match=r"teacher\.checksum"):
        TeacherStoreWriter(root, store_spec(changed, "zstd"))
