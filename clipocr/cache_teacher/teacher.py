"""The frozen CLIP teacher: an open_clip model plus the stage taps the student is distilled from.

DESIGN §4. Any open_clip model with a ViT image tower and a causal text transformer works: a
registered name (``ViT-B-16``) or a JSON model config, with `pretrained` a local weights file or —
only when the user names one — a pretrained tag that open_clip may download (`weights` resolves
both and settles the activation: QuickGELU for OpenAI's weights). Two details matter:

* **Image tower at 32×128.** A CLIP ViT learnt its positional embedding on a square grid (14×14
  for ViT-B/16 at 224). ``pos_embed="crop"`` (default, as the official CLIP-OCR code does) keeps
  the class token and the top-left window of the grid that a 32×128 image covers (2×8 for /16:
  indices 0..8 and 15..22); ``"interpolate"`` resizes the whole grid bicubically instead.
* **Text tower, character level, context 27.** Each character is one token (see
  `char_tokenizer`), and because the text transformer is causal, running it on ``L_max + 2 = 27``
  positions instead of 77 gives identical features for the kept tokens at a third of the cost.

Taps: the residual stream after blocks depth/4, 2·depth/4 and 3·depth/4 of each tower (3/6/9 for
ViT-B): all image tokens; text tokens ``c1..cL, EOT`` (SOT dropped); plus `text_emb`, the final
projected text embedding. We run the blocks ourselves rather than through hooks so the image tower
can stop after its last tap (a quarter of its compute saved) and the text tower runs at context 27.

For the store's label-keyed text table (``text_layout="table"``), `Teacher.table_features` runs
the text tower alone on distinct labels and keeps every position (c1..c25, EOT, pad…): with
``text_pad="align"`` the pad positions keep CLIP's pad-token features (the official code aligns
the decoder's positions past EOS with them), with ``"masked"`` they are zeroed. Shards are then
cached through `ImageTaps`, which asks `features` for the image taps only.

Features come out in a *storage form* (DESIGN §5): ``normalised`` (per-token LayerNorm without
affine on the stage taps, unit-length `text_emb`; the default) or ``raw``. `store_spec` describes a
teacher to the store by content (architecture, weights checksum, activation), never by path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.transformer import TextTransformer, VisionTransformer
from open_clip.utils import to_2tuple
from torch import nn

from clipocr.cache_teacher.char_tokenizer import CharTokenizer, tokenizer_from_spec
from clipocr.cache_teacher.tower_ops import (
    LN_EPS,
    POS_EMBED_MODES,
    STORAGE_FORMS,
    adapt_pos_embed,
    run_blocks,
    stage_blocks,
    text_forward,
    to_storage_form,
)
from clipocr.cache_teacher.weights import (
    ModelSpec,
    build_model,
    load_weights,
    resolve_model_spec,
    resolve_weights,
    sha256_file,
)
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import IMG_H, IMG_W, normalize
from clipocr.pipeline.teacher_store import TEXT_PADS, StoreSpec

__all__ = [  # the forward-pass pieces live in `tower_ops`; importable from here as before
    "LN_EPS", "POS_EMBED_MODES", "STORAGE_FORMS", "adapt_pos_embed", "run_blocks",
    "stage_blocks", "text_forward", "to_storage_form", "DEFAULT_DEMO_TEACHER", "ImageTaps",
    "Teacher", "TeacherConfig", "check_batch", "load_teacher", "store_spec",
]  # fmt: skip

log = logging.getLogger(__name__)

ASSETS_TEACHER = Path(__file__).resolve().parents[1] / "assets" / "teacher"
DEMO_TEACHER_CONFIG = ASSETS_TEACHER / "teacher.json"
DEMO_TEACHER_WEIGHTS = ASSETS_TEACHER / "teacher.safetensors"

# Fingerprint entries that say where a teacher came from, not what it is: recorded in the store
# manifest's ``source`` and never compared, so two paths to (or copies of) the same files are
# one teacher. The teacher is identified by its architecture and weights checksum.
PROVENANCE = ("model", "pretrained", "config_sha256", "activation_source")


@dataclass(frozen=True)
class TeacherConfig:
    """What identifies a teacher: model, weights, and how it is adapted to 32×128 words."""

    model: str = "ViT-B-16"
    pretrained: str | None = None
    pos_embed: str = "crop"
    context_length: int = 27
    charset: str = "36"
    form: str = "normalised"


DEFAULT_DEMO_TEACHER = TeacherConfig(
    model=str(DEMO_TEACHER_CONFIG), pretrained=str(DEMO_TEACHER_WEIGHTS)
)


# ------------------------------------------------------------------------------------------------
# the teacher


class Teacher(nn.Module):
    """A frozen open_clip CLIP that returns the cached targets for 32×128 word images + labels."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: CharTokenizer,
        cfg: TeacherConfig,
        spec: ModelSpec,
        weights_path: Path | None = None,
    ) -> None:
        super().__init__()
        visual = getattr(model, "visual", None)
        if not isinstance(visual, VisionTransformer):
            raise InputError(
                f"{cfg.model}: image tower {type(visual).__name__} is not an open_clip ViT; only "
                "ViT towers have the token stages CLIP-OCR distils"
            )
        text = model.text if hasattr(model, "text") else model
        if isinstance(text, TextTransformer) and text.cls_emb is not None:
            raise InputError(f"{cfg.model}: text towers with a class token are not supported")
        if getattr(text, "attn_mask", None) is None:
            raise InputError(f"{cfg.model}: the text tower is not causal (no attention mask)")
        pool = getattr(model, "text_pool_type", getattr(text, "pool_type", "argmax"))
        if pool not in ("argmax", "eos"):
            raise InputError(f"{cfg.model}: text pooling {pool!r} is not at EOT; unsupported")
        if cfg.context_length > text.positional_embedding.shape[0]:
            raise InputError(
                f"context length {cfg.context_length} exceeds the model's "
                f"{text.positional_embedding.shape[0]}"
            )
        self.model = model
        self.text_tower = text
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.spec = spec
        self.weights_path = weights_path
        self.weights_sha256 = sha256_file(weights_path) if weights_path else None
        self.mean, self.std = tuple(spec.mean), tuple(spec.std)
        self.context_length = cfg.context_length

        ph, pw = to_2tuple(visual.patch_size)
        if IMG_H % ph or IMG_W % pw:
            log.warning(
                "patch %dx%d does not tile %dx%d: edge pixels are ignored", ph, pw, IMG_H, IMG_W
            )
        self.grid = (IMG_H // ph, IMG_W // pw)
        pos = adapt_pos_embed(
            visual.positional_embedding, visual.grid_size, self.grid, cfg.pos_embed
        )
        self.register_buffer("image_pos", pos, persistent=False)
        self.image_taps = stage_blocks(len(visual.transformer.resblocks))
        self.text_taps = stage_blocks(len(text.transformer.resblocks))

    # -- description --------------------------------------------------------------------------
    @property
    def dims(self) -> dict[str, int]:
        proj = self.text_tower.text_projection
        width = self.text_tower.transformer.width
        if proj is None:
            emb = width
        else:
            emb = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]
        return {
            "image_tokens": 1 + self.grid[0] * self.grid[1],
            "image": self.model.visual.transformer.width,
            "text": width,
            "emb": emb,
        }

    def fingerprint(self) -> dict:
        """Everything that changes the cached targets, plus where it came from (`PROVENANCE`)."""
        return {
            "model": self.cfg.model,
            "config_sha256": self.spec.config_sha256,
            "pretrained": self.cfg.pretrained,
            "activation_source": self.spec.activation_source,
            "architecture_sha256": self.spec.architecture_sha256,
            "activation": self.spec.activation,
            "weights_sha256": self.weights_sha256,
            "pos_embed": self.cfg.pos_embed,
            "grid": list(self.grid),
            "context_length": self.context_length,
            "tokenizer": self.tokenizer.describe(),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_taps": list(self.image_taps),
            "text_taps": list(self.text_taps),
            "form": self.cfg.form,
            "open_clip_version": open_clip.__version__,
        }

    # -- forward ------------------------------------------------------------------------------
    def image_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """uint8 ``(B, 3, 32, 128)`` → residual streams after the 3 image taps, ``(B, N, D)``."""
        visual = self.model.visual
        x = normalize(images, self.mean, self.std).to(visual.conv1.weight.dtype)
        x = visual.conv1(x).flatten(2).transpose(1, 2)
        cls_tok = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_tok, x], dim=1) + self.image_pos.to(x.dtype)
        x = visual.ln_pre(x)
        return run_blocks(visual.transformer, x, None, self.image_taps, self.image_taps[-1])[1]

    def text_stages(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Token ids ``(B, ctx)`` → (taps ``(B, ctx, D)``, projected EOT embedding ``(B, E)``)."""
        return text_forward(self.text_tower, tokens, lengths, self.text_taps)

    @torch.inference_mode()
    def features(
        self, images: torch.Tensor, labels: list[str], text: bool = True
    ) -> dict[str, torch.Tensor]:
        """Cached targets for a batch, in the configured storage form (float32).

        `images`: uint8 ``(B, 3, 32, 128)`` on the teacher's device; `labels`: prepared labels.
        Returns image_s1..3 ``(B, N, D_img)``, text_s1..3 ``(B, L_max + 1, D_txt)`` (tokens
        ``c1..cL, EOT``, zero past each sample's ``text_lengths = L + 1``) and text_emb ``(B, E)``;
        with ``text=False`` the image taps only (the text tower does not run).
        """
        check_batch(images, labels)
        out = {f"image_s{i}": t for i, t in enumerate(self.image_stages(images), start=1)}
        if not text:
            return to_storage_form(out, self.cfg.form)
        device = images.device
        lengths = torch.tensor([len(s) for s in labels], dtype=torch.long, device=device)
        tokens = self.tokenizer.encode(labels, self.context_length).to(device)
        text_taps, emb = self.text_stages(tokens, lengths)
        width = int(lengths.max()) + 1
        keep = torch.arange(width, device=device)[None, :] < (lengths + 1)[:, None]
        for i, tap in enumerate(text_taps, start=1):
            out[f"text_s{i}"] = torch.where(keep[..., None], tap[:, 1 : width + 1], 0.0)
        out["text_emb"] = emb
        out = to_storage_form(out, self.cfg.form)
        out["text_lengths"] = lengths + 1
        return out

    @property
    def text_positions(self) -> int:
        """Positions a text-table row keeps: the whole context less SOT (26 at context 27)."""
        return self.context_length - 1

    @torch.inference_mode()
    def table_features(self, labels: list[str], text_pad: str) -> dict[str, torch.Tensor]:
        """The text tower alone on `labels` for the store's text table (storage form, float32).

        Returns text_s1..3 ``(B, P, D_txt)`` at every position ``c1..cL, EOT, pad…`` (P =
        `text_positions`; the tower runs at the full context, so every row is the one the
        official code's batch-width run gives, causal attention) and text_emb ``(B, E)``.
        ``text_pad="masked"`` zeroes the rows past EOT, ``"align"`` keeps the pad-token features.
        """
        if text_pad not in TEXT_PADS:
            raise ValueError(f"text_pad must be one of {TEXT_PADS}, not {text_pad!r}")
        device = next(self.parameters()).device
        lengths = torch.tensor([len(s) for s in labels], dtype=torch.long, device=device)
        tokens = self.tokenizer.encode(labels, self.context_length).to(device)
        text_taps, emb = self.text_stages(tokens, lengths)
        out = {}
        keep = torch.arange(self.text_positions, device=device)[None, :] < (lengths + 1)[:, None]
        for i, tap in enumerate(text_taps, start=1):
            tap = tap[:, 1 : self.text_positions + 1]
            out[f"text_s{i}"] = tap if text_pad == "align" else torch.where(keep[..., None], tap, 0)
        out["text_emb"] = emb
        return to_storage_form(out, self.cfg.form)


def check_batch(images: torch.Tensor, labels: list[str]) -> None:
    """ValueError unless `images` is a uint8 ``(B, 3, 32, 128)`` batch with B `labels`."""
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, IMG_H, IMG_W):
        raise ValueError(f"expected uint8 (B, 3, {IMG_H}, {IMG_W}) images, got {images.shape}")
    if len(labels) != images.shape[0]:
        raise ValueError(f"{len(labels)} labels for {images.shape[0]} images")


class ImageTaps(nn.Module):
    """A teacher whose `features` return the image taps only: how shards are cached into a store
    of the ``table`` text layout, whose text comes from the text table (the text tower then
    runs once per distinct label, not per sample). Anything else is the wrapped teacher's."""

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.teacher = teacher

    def __getattr__(self, name: str):  # noqa: ANN204 - whatever the teacher's attribute is
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["teacher"], name)

    def features(self, images: torch.Tensor, labels: list[str]) -> dict[str, torch.Tensor]:
        return self.teacher.features(images, labels, text=False)


def store_spec(
    teacher: Teacher, codec: str, text_layout: str = "ragged", text_pad: str = "masked"
) -> StoreSpec:
    """The manifest fields that make two stores interchangeable (DESIGN §5).

    The teacher is identified by content — architecture, weights checksum, activation and how it
    is adapted — and never by path: what `PROVENANCE` names goes to the spec's ``source``.
    `text_layout` / `text_pad`: see `StoreSpec` (``cache-teacher`` defaults to the table).
    """
    fp = teacher.fingerprint()
    return StoreSpec(
        teacher={
            "architecture_sha256": fp["architecture_sha256"],
            "checksum": fp["weights_sha256"],
            "activation": fp["activation"],
            "fingerprint": {k: v for k, v in fp.items() if k not in PROVENANCE},
        },
        preprocessing={
            "image_size": [IMG_H, IMG_W],
            "resize": "bicubic, aspect not kept",
            "mean": fp["mean"],
            "std": fp["std"],
            "pos_embed": fp["pos_embed"],
            "context_length": fp["context_length"],
        },
        dims=teacher.dims,
        form=teacher.cfg.form,
        codec=codec,
        charset=teacher.cfg.charset,
        source={k: fp[k] for k in PROVENANCE},
        text_layout=text_layout,
        text_pad=text_pad,
    )


def load_teacher(cfg: TeacherConfig, device: str | torch.device = "cpu") -> Teacher:
    """Build the teacher `cfg` names, frozen, in eval mode, on `device`."""
    if cfg.pos_embed not in POS_EMBED_MODES:
        raise InputError(f"pos_embed must be one of {POS_EMBED_MODES}, not {cfg.pos_embed!r}")
    if cfg.form not in STORAGE_FORMS:
        raise InputError(f"form must be one of {STORAGE_FORMS}, not {cfg.form!r}")
    charset = Charset.from_name(cfg.charset)
    if cfg.context_length < charset.max_len + 2:
        raise InputError(
            f"context length {cfg.context_length} < {charset.max_len + 2} (longest label + SOT/EOT)"
        )
    spec = resolve_model_spec(cfg.model)
    weights = None
    if cfg.pretrained is None:
        log.warning(
            "no pretrained weights given: the teacher %s is randomly initialised", cfg.model
        )
    else:
        weights = resolve_weights(cfg.model, cfg.pretrained, spec)
    text_cfg = spec.open_clip_config.get("text_cfg", {})
    if "hf_tokenizer_name" in text_cfg or "hf_model_name" in text_cfg:
        raise InputError(f"{cfg.model}: HF text towers are not supported (no char tokenisation)")
    try:
        tokenizer = tokenizer_from_spec(spec.tokenizer, charset.chars)
    except ValueError as err:
        raise InputError(f"{cfg.model}: {err}") from None
    try:
        model = build_model(spec.open_clip_config)
    except (TypeError, ValueError, KeyError) as err:
        raise InputError(f"{cfg.model}: invalid open_clip model config ({err})") from None
    if weights is not None:
        load_weights(model, weights)
    teacher = Teacher(model, tokenizer, cfg, spec, weights)
    return teacher.eval().requires_grad_(False).to(device)
