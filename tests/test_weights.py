"""Model and weights resolution: OpenAI checkpoints recognised, -quickgelu names, identity."""

from __future__ import annotations

import collections
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from clipocr.cache_teacher.weights import (
    ModelSpec,
    build_model,
    load_weights,
    openai_checkpoint,
    resolve_model_spec,
)
from clipocr.pipeline.errors import InputError

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


def test_weights_that_cannot_load_are_one_line_saying_why(tmp_path: Path) -> None:
    """Each unloadable file is one line naming it and the real problem (issue 23: before, the
    line ended at "Error(s) in loading state_dict for CLIP:" or read "[Errno 22]")."""
    teacher = Path(__file__).resolve().parents[1] / "clipocr" / "assets" / "teacher"
    model = build_model(resolve_model_spec(str(teacher / "teacher.json")).open_clip_config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "good.pt")
    good_pt = (tmp_path / "good.pt").read_bytes()
    save_file(state, str(tmp_path / "good.safetensors"))
    misfit = dict(state)
    misfit.pop("ln_final.bias")
    misfit["extra.weight"] = torch.zeros(2)
    misfit["visual.proj"] = torch.zeros(3, 3)
    cases = {
        "empty.pt": (b"", "the file is empty"),
        "cut.pt": (good_pt[: len(good_pt) // 2], "a torch checkpoint cut short"),
        "cut.safetensors": (
            (tmp_path / "good.safetensors").read_bytes()[:1000],
            "not a readable safetensors file, or one cut short",
        ),
        "noise.pt": (bytes(range(256)) * 8, "neither a safetensors file nor a torch checkpoint"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"model": collections.OrderedDict(a=1), "step": object()}, tmp_path / "obj.pt")
    cases["obj.pt"] = (None, "pickles Python objects besides tensors")
    save_file(misfit, str(tmp_path / "misfit.safetensors"))
    cases["misfit.safetensors"] = (
        None,
        f"the weights do not fit the model: 1 of the model's {len(state)} weights missing "
        "(ln_final.bias); 1 unexpected (extra.weight); 1 of another shape (visual.proj: [3, 3] "
        f"in the file, {list(state['visual.proj'].shape)} in the model)",
    )
    for name, (_, why) in cases.items():
        with pytest.raises(InputError) as err:
            load_weights(model, tmp_path / name)
        message = str(err.value)
        assert message.startswith(f"{tmp_path / name}: cannot load teacher weights: "), message
        assert why in message and "\n" not in message, message
    load_weights(model, tmp_path / "good.pt")  # and the good ones load
    load_weights(model, tmp_path / "good.safetensors")
