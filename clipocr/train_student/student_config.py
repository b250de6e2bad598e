"""Architecture of a student: `StudentConfig`, the named presets and `student_config`.

Kept apart from the modules (`model.py`) so a training config can be validated, and a
checkpoint's config read, without building a network. Presets ``small``/``tiny``/``base`` are
the paper's sizes with nothing added (the official decoder layer); ``mini`` and ``demo`` are
CPU-sized (DESIGN §6) and keep the standard decoder layer the demo's student was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from clipocr.pipeline.charset import MAX_LABEL_LEN, Charset

STEMS = ("linear", "conv")
# "official": the paper's layer (`official_decoder.py`); "standard": one causal stream (the demo's);
# "two_stream": PARSeq's with the content stream updated (issue 13's probe).
DEC_LAYERS = ("official", "standard", "two_stream")
# What a config saved before `dec_layer` existed was built with.
LEGACY_DEC_LAYER = "standard"
NUM_STAGES = 4  # both towers are split into 4 stages; stages 1–3 are tapped, the 4th is the output


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of a student. Defaults are the paper's ViT-Small student (≈ 31 M params)."""

    charset: str = "36"
    max_len: int = MAX_LABEL_LEN
    img_size: tuple[int, int] = (32, 128)
    patch_size: tuple[int, int] = (4, 8)
    enc_dim: int = 384
    enc_depth: int = 12
    enc_heads: int = 6
    mlp_ratio: float = 4.0
    dec_depth: int = 4
    dec_heads: int = 12
    dec_mlp_ratio: float = 4.0
    dropout: float = 0.1
    dec_layer: str = "official"  # one of DEC_LAYERS; others are for CPU budgets (issue 13)
    # Additions to the paper for CPU budgets (issue 13), off in the paper's presets:
    stem: str = "linear"  # "linear" = timm's patch embedding; "conv" = `ConvStem`
    ctc_weight: float = 0.0  # > 0 adds a CTC head on the final encoder tokens, loss × weight
    ctc_align: bool = False  # the decoder's memory carries each column's CTC character index

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so configs compare equal.
        object.__setattr__(self, "img_size", tuple(int(v) for v in self.img_size))
        object.__setattr__(self, "patch_size", tuple(int(v) for v in self.patch_size))
        Charset.from_name(self.charset, self.max_len)  # raises on an unknown charset
        problems = []
        if len(self.img_size) != 2 or len(self.patch_size) != 2:
            problems.append("img_size and patch_size must be (H, W) pairs")
        elif any(i % p for i, p in zip(self.img_size, self.patch_size, strict=True)):
            problems.append(f"img_size {self.img_size} is not a multiple of {self.patch_size}")
        if self.enc_depth < NUM_STAGES or self.enc_depth % NUM_STAGES:
            problems.append(f"enc_depth {self.enc_depth} must be a positive multiple of 4")
        if self.enc_dim % self.enc_heads or self.enc_dim % self.dec_heads:
            problems.append(f"enc_dim {self.enc_dim} must be divisible by enc_heads and dec_heads")
        if self.stem not in STEMS:
            problems.append(f"stem {self.stem!r} is not one of {STEMS}")
        elif self.stem == "conv" and any(p & (p - 1) for p in self.patch_size):
            problems.append(f"the conv stem needs power-of-two patch sides, not {self.patch_size}")
        if self.dec_layer not in DEC_LAYERS:
            problems.append(f"dec_layer {self.dec_layer!r} is not one of {DEC_LAYERS}")
        if self.ctc_weight < 0:
            problems.append(f"ctc_weight {self.ctc_weight} must be ≥ 0")
        if self.ctc_align and self.ctc_weight <= 0:
            problems.append("ctc_align needs a CTC head (ctc_weight > 0)")
        if self.dec_depth < 1 or self.max_len < 1:
            problems.append("dec_depth and max_len must be ≥ 1")
        if problems:
            raise ValueError("invalid StudentConfig: " + "; ".join(problems))

    @property
    def num_patches(self) -> int:
        return (self.img_size[0] // self.patch_size[0]) * (self.img_size[1] // self.patch_size[1])

    @property
    def num_tokens(self) -> int:
        """Encoder tokens per image: the class token plus the patches (129 for the paper)."""
        return 1 + self.num_patches

    @property
    def enc_taps(self) -> tuple[int, int, int]:
        """1-based encoder block counts after which stages 1–3 are read."""
        step = self.enc_depth // NUM_STAGES
        return step, 2 * step, 3 * step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        """Inverse of `to_dict`; rejects unknown keys so a foreign config is not half-read. A
        config without `dec_layer` predates the official layer: it gets the layer it was built
        with (`LEGACY_DEC_LAYER`), not today's default."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown StudentConfig keys {sorted(unknown)}")
        return cls(**{"dec_layer": LEGACY_DEC_LAYER, **data})


# The standard layer: the demo's student was trained with it (the bundled student must read as
# before), and in issue 13's CPU-budget probe it read best per decoder sample with `ctc_align`
# (docs/issue13_findings.md).
_MINI = StudentConfig(
    dec_layer="standard",
    enc_dim=128,
    enc_depth=4,
    enc_heads=4,
    patch_size=(32, 4),
    mlp_ratio=2.0,
    dec_heads=4,
    dec_mlp_ratio=2.0,
)

PRESETS: dict[str, StudentConfig] = {
    # Tiny dims for tests: stage taps after blocks 1/2/3, 4 decoder layers like the paper.
    "test": StudentConfig(
        enc_dim=32,
        enc_depth=4,
        enc_heads=2,
        dec_depth=4,
        dec_heads=2,
        mlp_ratio=2.0,
        dec_mlp_ratio=2.0,
    ),
    # PARSeq-Ti sizes: decoder head dim 32 as in the small model.
    "tiny": StudentConfig(enc_dim=192, enc_heads=3, dec_heads=6),
    # A CPU-sized student for the offline demo: full-height 32×4 patches (32 tokens, read left to
    # right like CRNN columns) keep a training step affordable on two cores.
    "mini": _MINI,
    # The demo's student (issue 13, docs/issue13_findings.md): mini's sizes plus the CPU-budget
    # additions — a conv stem (the encoder sees strokes from the first steps), a CTC head on its
    # tokens (a per-column loss that teaches the encoder to read long before the decoder's
    # cross-attention has learnt where to look) and the CTC character index in the decoder's
    # memory (so the decoder reads as soon as the encoder does); no dropout in a run this short.
    "demo": replace(_MINI, dropout=0.0, stem="conv", ctc_weight=1.0, ctc_align=True),
    # The paper's student (ViT-S encoder, the official decoder layer).
    "small": StudentConfig(),
    # ViT-B encoder; decoder heads of 64 dims as in ViT-B.
    "base": StudentConfig(enc_dim=768, enc_heads=12, dec_heads=12),
}


def student_config(preset: str = "small", **overrides: Any) -> StudentConfig:
    """A preset with some fields replaced, e.g. ``student_config("small", charset="94")``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown student preset {preset!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[preset], **overrides)
