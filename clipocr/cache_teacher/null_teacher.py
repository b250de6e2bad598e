"""A null teacher: a real teacher's interface and shapes, fixed features, no forward pass.

Caching MJ+ST at GPU rates is decided by the work *around* the teacher (issue 14): tar read,
decode, host → device copy, copy-out, encoding, chunk writes and commit. `NullTeacher` stands in
for a `Teacher` in the real runner and store so that work is measured alone
(``bench/bench_cache.py --teacher null``): it answers `features` with features of the real
teacher's shapes and dtypes, made once per batch size, precision and device, so a call costs a
few device ops (text padding is still masked per batch, since label lengths differ).

It is a `Teacher` (same attributes, description and stage methods, so any caller of the real one
works), built from one by `NullTeacher.like`, which keeps everything but the towers. Its
fingerprint names it as a null teacher, so a store it fills can never pass for the real
teacher's. The values are seeded Gaussian noise in the storage form: about as compressible as a
random-init teacher's features, not a trained one's.
"""

from __future__ import annotations

import torch
from torch import nn

from clipocr.cache_teacher.teacher import (
    Teacher,
    TeacherConfig,
    check_batch,
    load_teacher,
    to_storage_form,
)

NULL_MARK = "null-teacher"


class NullTeacher(Teacher):
    """A `Teacher` whose towers are replaced by fixed features of the same shapes."""

    def __init__(self, real: Teacher, seed: int = 0) -> None:
        nn.Module.__init__(self)
        # Every plain attribute and buffer of the real teacher (tokenizer, config, taps, grid,
        # positional embedding …), none of its modules (nn.Module keeps those in `_modules`):
        # the towers are what is left out.
        for name, value in vars(real).items():
            if not name.startswith("_"):
                setattr(self, name, value)
        for name, buf in real.named_buffers(recurse=False):
            self.register_buffer(name, buf.detach().clone(), persistent=False)
        self._dims = dict(real.dims)
        self._real_fingerprint = real.fingerprint()
        self.seed = seed
        # The runner finds the teacher's device from its first parameter.
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self._pool: dict[tuple[torch.dtype, torch.device], dict[str, torch.Tensor]] = {}

    @classmethod
    def like(cls, teacher: Teacher, seed: int = 0) -> NullTeacher:
        """A null teacher with `teacher`'s shapes, on `teacher`'s device."""
        return cls(teacher, seed).to(next(teacher.parameters()).device)

    # -- description --------------------------------------------------------------------------
    @property
    def dims(self) -> dict[str, int]:
        return dict(self._dims)

    def fingerprint(self) -> dict:
        """The real teacher's fingerprint, marked: a null store never matches a real teacher."""
        fp = dict(self._real_fingerprint)
        fp["model"] = f"{NULL_MARK}({fp['model']})"
        fp["architecture_sha256"] = f"{NULL_MARK}({fp['architecture_sha256']})"
        fp["weights_sha256"] = None
        fp["null_seed"] = self.seed
        return fp

    # -- fixed features -----------------------------------------------------------------------
    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        """What the real towers would compute in here: autocast's dtype, else float32."""
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return torch.float32

    def _raw(
        self, b: int, dtype: torch.dtype, device: torch.device, image: bool = True
    ) -> dict[str, torch.Tensor]:
        """Seeded raw taps for `b` samples: image ``(b, N, D)`` (unless not `image`: the text
        table needs none), text ``(b, ctx, D)``, emb."""
        gen = torch.Generator().manual_seed(self.seed)
        d = self._dims

        def noise(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)

        raw = {}
        if image:
            raw |= {f"image_s{i}": noise(b, d["image_tokens"], d["image"]) for i in (1, 2, 3)}
        raw |= {f"text_s{i}": noise(b, self.context_length, d["text"]) for i in (1, 2, 3)}
        raw["text_emb"] = noise(b, d["emb"])
        return raw

    def _features_for(self, b: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Storage-form features for at least `b` samples, made once per (dtype, device) and
        grown when a larger batch comes. Text taps keep positions ``c1..`` (SOT dropped)."""
        key = (self._compute_dtype(device), device)
        pool = self._pool.get(key)
        if pool is None or len(pool["text_emb"]) < b:
            raw = self._raw(b, *key)
            raw |= {k: v[:, 1:] for k, v in raw.items() if k.startswith("text_s")}
            pool = self._pool[key] = to_storage_form(raw, self.cfg.form)
        return pool

    def image_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Fixed raw image taps ``(B, N, D)`` in the compute dtype."""
        raw = self._raw(images.shape[0], self._compute_dtype(images.device), images.device)
        return [raw[f"image_s{i}"] for i in (1, 2, 3)]

    def text_stages(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Fixed raw text taps ``(B, ctx, D)`` and embedding ``(B, E)``."""
        raw = self._raw(tokens.shape[0], self._compute_dtype(tokens.device), tokens.device, False)
        width = tokens.shape[1]
        return [raw[f"text_s{i}"][:, :width] for i in (1, 2, 3)], raw["text_emb"]

    @torch.inference_mode()
    def features(
        self, images: torch.Tensor, labels: list[str], text: bool = True
    ) -> dict[str, torch.Tensor]:
        """`Teacher.features`' keys, shapes and dtypes, from the fixed features (no towers).

        (`Teacher.table_features` works unchanged: it runs this class's `text_stages`.)"""
        check_batch(images, labels)
        b, device = images.shape[0], images.device
        pool = self._features_for(b, device)
        out = {f"image_s{i}": pool[f"image_s{i}"][:b] for i in (1, 2, 3)}
        if not text:
            return out
        lengths = torch.tensor([len(s) for s in labels], dtype=torch.long, device=device)
        width = max(len(s) for s in labels) + 1
        keep = torch.arange(width, device=device)[None, :] < (lengths + 1)[:, None]
        for i in (1, 2, 3):
            tap = pool[f"text_s{i}"][:b, :width]
            out[f"text_s{i}"] = torch.where(keep[..., None], tap, 0.0)
        out["text_emb"] = pool["text_emb"][:b]
        out["text_lengths"] = lengths + 1
        return out


def load_null_teacher(cfg: TeacherConfig, device: str | torch.device = "cpu") -> NullTeacher:
    """`load_teacher`'s signature: the null teacher of the teacher `cfg` names.

    The real teacher is built on the CPU (its weights, if any, are read for the fingerprint) and
    dropped; only its description and shapes are kept.
    """
    return NullTeacher(load_teacher(cfg, "cpu")).to(device)
