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
import torch.nn.functional as F
from open_clip.transformer import TextTransformer, VisionTransformer
from open_clip.utils import to_2tuple
from torch import nn

from clipocr.cache_teacher.char_tokenizer import CharTokenizer, tokenizer_from_spec
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
from clipocr.pipeline.teacher_store import StoreSpec

log = logging.getLogger(__name__)

ASSETS_TEACHER = Path(__file__).resolve().parents[1] / "assets" / "teacher"
DEMO_TEACHER_CONFIG = ASSETS_TEACHER / "teacher.json"
DEMO_TEACHER_WEIGHTS = ASSETS_TEACHER / "teacher.safetensors"

POS_EMBED_MODES = ("crop", "interpolate")
STORAGE_FORMS = ("normalised", "raw")
LN_EPS = 1e-5
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
# pieces of the forward pass


def stage_blocks(depth: int) -> tuple[int, int, int]:
    """1-based block counts after which stages 1..3 end (the official ``depth//4`` split)."""
    if depth < 4:
        raise InputError(f"a tower of {depth} blocks cannot be split into 4 stages")
    return (depth // 4, 2 * depth // 4, 3 * depth // 4)


def adapt_pos_embed(
    pos: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], mode: str
) -> torch.Tensor:
    """Class-token + grid positional embedding ``(1 + H·W, D)`` moved to another patch grid.

    ``crop`` keeps the top-left ``dst`` window (the official code's choice: a 32×128 word is the
    top-left corner of a square CLIP image); ``interpolate`` resizes the whole grid bicubically
    (with antialiasing, as open_clip's own `resize_pos_embed`). Same grid: unchanged copy.
    """
    if mode not in POS_EMBED_MODES:
        raise ValueError(f"pos_embed must be one of {POS_EMBED_MODES}, not {mode!r}")
    (sh, sw), (dh, dw) = src_grid, dst_grid
    if pos.shape[0] != 1 + sh * sw:
        raise ValueError(f"positional embedding has {pos.shape[0]} rows, grid {sh}×{sw} needs more")
    cls_pos, grid = pos[:1], pos[1:].reshape(sh, sw, -1)
    if (sh, sw) == (dh, dw):
        return pos.detach().clone()
    if mode == "crop":
        if dh > sh or dw > sw:
            raise ValueError(f"cannot crop a {dh}×{dw} window from a {sh}×{sw} grid")
        grid = grid[:dh, :dw]
    else:
        img = grid.permute(2, 0, 1).unsqueeze(0).float()
        img = F.interpolate(img, size=(dh, dw), mode="bicubic", align_corners=False, antialias=True)
        grid = img[0].permute(1, 2, 0).to(pos.dtype)
    return torch.cat([cls_pos, grid.reshape(dh * dw, -1)]).detach().clone()


def run_blocks(
    transformer: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    taps: tuple[int, ...],
    n: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the first `n` residual blocks on batch-first `x`, keeping the stream after `taps`."""
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    kept = []
    for i, block in enumerate(transformer.resblocks[:n], start=1):
        x = block(x, attn_mask=mask)
        if i in taps:
            kept.append(x if batch_first else x.transpose(0, 1))
    return (x if batch_first else x.transpose(0, 1)), kept


def to_storage_form(feats: dict[str, torch.Tensor], form: str) -> dict[str, torch.Tensor]:
    """Raw taps → the cache's storage form (DESIGN §5), all float32.

    ``normalised``: stage taps ``(x − mean)/√(var + 1e-5)`` per token (LayerNorm without affine;
    all-zero padding rows stay zero) and `text_emb` L2-normalised. ``raw``: unchanged values.
    """
    if form not in STORAGE_FORMS:
        raise ValueError(f"storage form must be one of {STORAGE_FORMS}, not {form!r}")
    out = {}
    for key, value in feats.items():
        if key.startswith(("image_s", "text_s")):
            value = value.float()
            if form == "normalised":
                value = F.layer_norm(value, value.shape[-1:], eps=LN_EPS)
        elif key == "text_emb":
            value = value.float()
            if form == "normalised":
                value = F.normalize(value, dim=-1)
        out[key] = value
    return out


def _project(x: torch.Tensor, proj: nn.Module | torch.Tensor | None) -> torch.Tensor:
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def text_forward(
    text: nn.Module, tokens: torch.Tensor, lengths: torch.Tensor, taps: tuple[int, ...] = ()
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Causal text tower on ``[SOT, c1..cL, EOT, pad…]`` ids of any width ≥ max(L) + 2.

    `text` is an open_clip CLIP (or its `TextTransformer`). Because attention is causal, the
    features of the kept tokens do not depend on how many pad positions follow, so the width can
    be 27 instead of 77, or just the batch's longest label + 2 while training. Returns the
    residual streams after the blocks in `taps` and the projected EOT embedding.
    """
    dtype = text.transformer.get_cast_dtype()
    width = tokens.shape[1]
    x = text.token_embedding(tokens).to(dtype) + text.positional_embedding[:width].to(dtype)
    mask = torch.full((width, width), float("-inf"), device=x.device).triu_(1)
    depth = len(text.transformer.resblocks)
    x, kept = run_blocks(text.transformer, x, mask, taps, depth)
    x = text.ln_final(x)
    eot = x[torch.arange(x.shape[0], device=x.device), lengths + 1]
    return kept, _project(eot, text.text_projection)


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
    def features(self, images: torch.Tensor, labels: list[str]) -> dict[str, torch.Tensor]:
        """Cached targets for a batch, in the configured storage form (float32).

        `images`: uint8 ``(B, 3, 32, 128)`` on the teacher's device; `labels`: prepared labels.
        Returns image_s1..3 ``(B, N, D_img)``, text_s1..3 ``(B, L_max + 1, D_txt)`` (tokens
        ``c1..cL, EOT``, zero past each sample's ``text_lengths = L + 1``) and text_emb ``(B, E)``.
        """
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, IMG_H, IMG_W):
            raise ValueError(f"expected uint8 (B, 3, {IMG_H}, {IMG_W}) images, got {images.shape}")
        if len(labels) != images.shape[0]:
            raise ValueError(f"{len(labels)} labels for {images.shape[0]} images")
        device = images.device
        lengths = torch.tensor([len(s) for s in labels], dtype=torch.long, device=device)
        tokens = self.tokenizer.encode(labels, self.context_length).to(device)
        out = {f"image_s{i}": t for i, t in enumerate(self.image_stages(images), start=1)}
        text_taps, emb = self.text_stages(tokens, lengths)
        width = int(lengths.max()) + 1
        keep = torch.arange(width, device=device)[None, :] < (lengths + 1)[:, None]
        for i, tap in enumerate(text_taps, start=1):
            out[f"text_s{i}"] = torch.where(keep[..., None], tap[:, 1 : width + 1], 0.0)
        out["text_emb"] = emb
        out = to_storage_form(out, self.cfg.form)
        out["text_lengths"] = lengths + 1
        return out


def store_spec(teacher: Teacher, codec: str) -> StoreSpec:
    """The manifest fields that make two stores interchangeable (DESIGN §5).

    The teacher is identified by content — architecture, weights checksum, activation and how it
    is adapted — and never by path: what `PROVENANCE` names goes to the spec's ``source``.
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
