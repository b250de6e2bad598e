"""Which open_clip model a teacher is, and which weights it carries (DESIGN §4).

`resolve_model_spec` turns a registered name or a JSON config into an open_clip config;
`resolve_weights` turns a local file or a named tag into a weights file (the only place a
download may happen); `load_weights` loads one strictly.

**Activation.** OpenAI's CLIP models were trained with QuickGELU, open_clip's configs of the same
architectures say GELU, and with identical weights the two activations move ViT-B/16's taps by
up to 4 absolute. The activation is therefore settled before the model is built, in this order:
an explicit ``-quickgelu`` model name; OpenAI's weights recognised in the file, as open_clip
recognises them (a TorchScript archive, OpenAI's release format — `open_clip.load_openai_model`
— or a state dict that still holds OpenAI's ``input_resolution``, ``context_length`` and
``vocab_size`` entries), which always mean QuickGELU; a pretrained tag's own setting; else the
config's. A plain state dict carries no mark of where it came from: for it the config decides,
with a warning when the model has an OpenAI tag. `ModelSpec.activation` is what the teacher
fingerprint and the store manifest record.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.factory import load_state_dict
from torch import nn

from clipocr.pipeline.errors import InputError

log = logging.getLogger(__name__)

TEACHER_FORMAT = "clipocr-teacher/1"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
QUICKGELU_SUFFIX = "-quickgelu"
# Entries of OpenAI's CLIP state dicts that are no weights (open_clip drops them on load).
OPENAI_EXTRA_KEYS = frozenset({"input_resolution", "context_length", "vocab_size"})


@dataclass
class ModelSpec:
    """A resolved model: open_clip config plus what open_clip configs cannot carry."""

    open_clip_config: dict
    tokenizer: dict | None = None  # None: OpenAI BPE
    mean: tuple[float, ...] = open_clip.OPENAI_DATASET_MEAN
    std: tuple[float, ...] = open_clip.OPENAI_DATASET_STD
    config_sha256: str | None = None
    activation_source: str = "model config"

    @property
    def activation(self) -> str:
        return "quick_gelu" if self.open_clip_config.get("quick_gelu") else "gelu"

    def use_quick_gelu(self, why: str) -> None:
        self.open_clip_config["quick_gelu"] = True
        self.activation_source = why

    @property
    def architecture_sha256(self) -> str:
        """The open_clip config by content (key order and file layout aside)."""
        text = json.dumps(self.open_clip_config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def teacher_config_json(open_clip_config: dict, tokenizer: dict, mean, std) -> dict:
    """The clipocr teacher config format: an open_clip config with its tokenizer and mean/std.

    open_clip's ``CLIP(**cfg)`` rejects unknown keys, so the tokenizer cannot live inside the
    open_clip config; this wrapper carries it alongside, and `load_teacher` reads both.
    """
    return {
        "format": TEACHER_FORMAT,
        "open_clip_config": open_clip_config,
        "tokenizer": tokenizer,
        "preprocess": {"mean": list(mean), "std": list(std)},
    }


def _registered_spec(model: str) -> ModelSpec:
    cfg = open_clip.get_model_config(model)
    quick = model.endswith(QUICKGELU_SUFFIX)
    if cfg is None and quick:  # e.g. ViT-B-16-plus-240-quickgelu: the base config + QuickGELU
        cfg = open_clip.get_model_config(model.removesuffix(QUICKGELU_SUFFIX))
    if cfg is None:
        raise InputError(
            f"unknown open_clip model {model!r}: give a name from open_clip.list_models() or a "
            "path to a model config JSON"
        )
    spec = ModelSpec(cfg)
    if quick:
        spec.use_quick_gelu(f"model name {model}")
    return spec


def resolve_model_spec(model: str) -> ModelSpec:
    """A registered open_clip name, or a JSON file (clipocr teacher format or open_clip's)."""
    path = Path(model).expanduser()
    if not (path.suffix == ".json" or path.is_file()):
        return _registered_spec(model)
    if not path.is_file():
        raise InputError(f"{path}: no such model config file")
    data = path.read_bytes()
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not a JSON model config ({err})") from None
    sha = hashlib.sha256(data).hexdigest()
    if isinstance(raw, dict) and "open_clip_config" in raw:
        pre = raw.get("preprocess", {})
        return ModelSpec(
            raw["open_clip_config"],
            raw.get("tokenizer"),
            tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
            sha,
        )
    if isinstance(raw, dict) and {"embed_dim", "vision_cfg", "text_cfg"} <= raw.keys():
        return ModelSpec(raw, config_sha256=sha)
    raise InputError(f"{path}: neither a clipocr teacher config nor an open_clip model config")


def build_model(open_clip_config: dict) -> nn.Module:
    """Instantiate open_clip's CLIP / CustomTextCLIP from a config, randomly initialised."""
    cfg = copy.deepcopy(open_clip_config)
    if "multimodal_cfg" in cfg:
        raise InputError("CoCa models are not supported as teachers (no CLIP text embedding)")
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return cls(**cfg)


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith(WEIGHT_SUFFIXES)


def resolve_weights(model: str, pretrained: str, spec: ModelSpec) -> Path:
    """Local weights file, or the file of a pretrained tag the user named (downloads if needed).

    Also settles the activation from what the weights are (see the module docstring).
    """
    path = Path(pretrained).expanduser()
    if path.is_file():
        _settle_activation(model, path, spec)
        return path
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained) if not _looks_like_path(model) else {}
    if not tag_cfg:
        if _looks_like_path(pretrained):
            raise InputError(f"{path}: no such weights file")
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise InputError(
            f"--clip-pretrained {pretrained!r} is neither a weights file nor a pretrained tag of "
            f"{model} (tags: {', '.join(tags) or 'none'})"
        )
    # The user asked for a named tag: this is the only place a download may happen.
    if tag_cfg.get("quick_gelu"):
        spec.use_quick_gelu(f"pretrained tag {pretrained}")
    spec.mean = tuple(tag_cfg.get("mean", spec.mean))
    spec.std = tuple(tag_cfg.get("std", spec.std))
    try:
        path = Path(open_clip.download_pretrained(tag_cfg))
    except Exception as err:  # network / hub errors come in many types
        raise InputError(f"cannot fetch weights for {model} tag {pretrained!r}: {err}") from None
    _settle_activation(model, path, spec)
    return path


def _settle_activation(model: str, path: Path, spec: ModelSpec) -> None:
    """QuickGELU when `path` holds OpenAI's weights; a warning when a plain file leaves it open."""
    why = openai_checkpoint(path)
    if why:
        if spec.activation != "quick_gelu":
            log.info("%s: %s, so QuickGELU (OpenAI's activation)", path, why)
            spec.use_quick_gelu(f"OpenAI checkpoint: {why}")
        return
    if spec.activation == "gelu" and not _looks_like_path(model):
        openai = open_clip.get_pretrained_cfg(model, "openai")
        if openai.get("quick_gelu"):
            log.warning(
                "%s: not recognisably OpenAI's weights (no TorchScript archive, no OpenAI "
                "state-dict keys): building %s with GELU as its config says. OpenAI's CLIP uses "
                "QuickGELU: if these are OpenAI's weights, name the model %s%s",
                path,
                model,
                model,
                QUICKGELU_SUFFIX,
            )


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip whose record holds ``constants.pkl`` (as torch checks)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in archive.namelist())


def _state_keys(path: Path) -> set[str]:
    """The weight names in a checkpoint, read cheaply (safetensors header, memory-mapped torch)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as fh:
                return set(fh.keys())
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable here means unreadable in `load_weights`, which says why
        return set()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return {str(k).removeprefix("module.") for k in obj} if isinstance(obj, dict) else set()


def openai_checkpoint(path: Path) -> str | None:
    """Why the file at `path` holds OpenAI's CLIP weights, or None when nothing says so."""
    if _is_torchscript(path):
        return "TorchScript archive"
    if OPENAI_EXTRA_KEYS <= _state_keys(path):
        return "state dict with OpenAI's input_resolution/context_length/vocab_size entries"
    return None


def _openai_state_dict(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """OpenAI's weights in open_clip's names (the same names; as `build_model_from_openai_…`).

    `torch.jit.load` reads the TorchScript format, not Python pickles; only the archive's
    tensors are used, its code never runs. TorchScript also saves buffers that open_clip keeps
    out of its state dict (the causal mask), so those are dropped with OpenAI's extra entries.
    """
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = load_state_dict(str(path), weights_only=True)
    transient = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    drop = OPENAI_EXTRA_KEYS | transient
    return {k: v for k, v in state.items() if k not in drop}


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a checkpoint strictly (safetensors, TorchScript, or torch.load ``weights_only``);
    a file that cannot be loaded is one line naming it and what is wrong (`_why_not_loaded`)."""
    try:
        if openai_checkpoint(path):
            model.load_state_dict(_openai_state_dict(model, path), strict=True)
        else:
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except Exception as err:  # corrupt files raise pickle/zip/safetensors/key errors alike
        raise InputError(
            f"{path}: cannot load teacher weights: {_why_not_loaded(model, path, err)}"
        ) from None


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (torch's and safetensors' span several), cut at
    `limit` characters."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = text or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _why_not_loaded(model: nn.Module, path: Path, err: Exception) -> str:
    """What is wrong with a weights file that failed to load: unreadable (empty, cut short, not
    a checkpoint, pickled objects), or weights that do not fit the model (which are missing,
    unexpected or of another shape, with counts). Only run on failure: it reads the file again.
    """
    try:
        if openai_checkpoint(path):
            state = _openai_state_dict(model, path)
        else:
            state = load_state_dict(str(path), weights_only=True)
    except Exception as read_err:
        return _unreadable(path, read_err)
    return _misfit(model, state) or one_line(err)


def _unreadable(path: Path, err: Exception) -> str:
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as fh:
        head = fh.read(8)
    is_zip = zipfile.is_zipfile(path)
    if head.startswith(b"PK\x03\x04") and not is_zip:
        return f"a torch checkpoint cut short ({size} bytes, no zip directory at its end)"
    if "SafetensorError" in type(err).__name__ or path.suffix == ".safetensors":
        return f"not a readable safetensors file, or one cut short ({size} bytes: {one_line(err)})"
    if "weights only load failed" in str(err).lower():
        if is_zip or head[:1] == b"\x80":  # a torch zip archive, or a (legacy) pickle
            return (
                "it pickles Python objects besides tensors, which are not loaded (torch.load "
                "weights_only): save the model's state_dict() instead"
            )
        return "neither a safetensors file nor a torch checkpoint"
    return one_line(err)


def _misfit(model: nn.Module, state: object) -> str | None:
    """Which weights of `state` do not fit `model`: counts and the first few names."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict of weights"
    expected = model.state_dict()
    state = {str(k): v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: {list(state[k].shape)} in the file, {list(v.shape)} in the model"
        for k, v in expected.items()
        if isinstance(state.get(k), torch.Tensor) and state[k].shape != v.shape
    ]

    def part(items: list[str], what: str) -> str | None:
        if not items:
            return None
        more = ", …" if len(items) > 3 else ""
        return f"{len(items)} {what} ({', '.join(items[:3])}{more})"

    parts = [
        part(missing, f"of the model's {len(expected)} weights missing"),
        part(unexpected, "unexpected"),
        part(shapes, "of another shape"),
    ]
    found = [p for p in parts if p]
    return f"the weights do not fit the model: {'; '.join(found)}" if found else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
