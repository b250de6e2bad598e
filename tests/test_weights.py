"""Model and weights resolution: OpenAI checkpoints recognised, -quickgelu names, identity."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from clipocr.cache_teacher.weights import ModelSpec, openai_checkpoint, resolve_model_spec

OPENAI_ENTRIES = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}


def test_openai_checkpoints_are_recognised(tmp_path: Path) -> None:
    archive = tmp_path / "openai.pt"
    with warnings.catch_warnings():  # torch.jit's deprecation notices
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(nn.Linear(2, 2), torch.zeros(1, 2)), str(archive))
    assert openai_checkpoint(archive) == "TorchScript archive"

    state = {"w": torch.zeros(2)} | {k: torch.tensor(v) for k, v in OPENAI_ENTRIES.items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "a.pt")
    save_file(state, str(tmp_path / "a.safetensors"))
    for name in ("a.pt", "a.safetensors"):
        assert "OpenAI's input_resolution" in openai_checkpoint(tmp_path / name)

    # a plain state dict, one with only some of the entries, a non-torch zip, garbage: no mark
    torch.save({"w": torch.zeros(2), "context_length": torch.tensor(77)}, tmp_path / "p.pt")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "p.safetensors"))
    with zipfile.ZipFile(tmp_path / "z.pt", "w") as z:
        z.writestr("z/constants.txt", "x")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for name in ("p.pt", "p.safetensors", "z.pt", "bad.pt"):
        assert openai_checkpoint(tmp_path / name) is None, name


def test_quickgelu_names_resolve() -> None:
    """A registered ``-quickgelu`` config, or any registered base name with the suffix."""
    for name in ("ViT-B-16-quickgelu", "ViT-B-16-plus-240-quickgelu"):
        spec = resolve_model_spec(name)
        assert spec.activation == "quick_gelu" and spec.activation_source == f"model name {name}"
    base = resolve_model_spec("ViT-B-16-plus-240")
    assert base.activation == "gelu" and base.activation_source == "model config"


def test_architecture_is_content() -> None:
    """Key order does not matter, the activation does; a registered name equals its suffix."""
    a = ModelSpec({"embed_dim": 4, "vision_cfg": {"a": 1, "b": 2}})
    b = ModelSpec({"vision_cfg": {"b": 2, "a": 1}, "embed_dim": 4})
    assert a.architecture_sha256 == b.architecture_sha256
    b.use_quick_gelu("test")
    assert a.architecture_sha256 != b.architecture_sha256
    named = resolve_model_spec("ViT-B-16")
    named.use_quick_gelu("OpenAI checkpoint")
    assert named.architecture_sha256 == resolve_model_spec("ViT-B-16-quickgelu").architecture_sha256
