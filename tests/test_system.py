"""DistillSystem: the paper's `small` preset (the official decoder layer) trains with distillation
at tiny dims, its text AAM terms reading the decoder stages."""

from __future__ import annotations

import torch

from clipocr.train_student.model import Student, student_config
from clipocr.train_student.official_decoder import OfficialLayer
from clipocr.train_student.system import DistillSystem, param_groups

LABELS = ["abc", "hello", "x", "0a9z"]
DIMS = {"image_tokens": 17, "image": 24, "text": 20, "emb": 16}
TINY = {"enc_dim": 32, "enc_depth": 4, "enc_heads": 2, "dec_heads": 2, "mlp_ratio": 2.0,
        "dec_mlp_ratio": 2.0}  # fmt: skip


def _batch(student: Student) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tgt_in, tgt_out = student.charset.batch_targets(LABELS)
    b, t = tgt_in.shape
    mask = torch.zeros(b, t, dtype=torch.bool)
    for row, label in enumerate(LABELS):
        mask[row, : len(label) + 1] = True
    batch = {"images": torch.randn(b, 3, 32, 128, generator=g), "tgt_in": tgt_in,
             "tgt_out": tgt_out, "text_mask": mask,
             "text_emb": torch.randn(b, DIMS["emb"], generator=g)}  # fmt: skip
    for i in (1, 2, 3):
        batch[f"image_s{i}"] = torch.randn(b, DIMS["image_tokens"], DIMS["image"], generator=g)
        batch[f"text_s{i}"] = torch.randn(b, t, DIMS["text"], generator=g)
    return batch


def test_small_preset_trains_with_distillation_on_the_official_decoder() -> None:
    torch.manual_seed(0)
    student = Student(student_config("small", **TINY))
    assert all(isinstance(layer, OfficialLayer) for layer in student.dec_layers)
    system = DistillSystem(student, DIMS)
    batch = _batch(student)
    opt = torch.optim.AdamW(param_groups(system, 3e-3, 1.0), weight_decay=0.0)
    history = []
    for _ in range(8):
        terms = system(batch)
        opt.zero_grad()
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(system.parameters(), 20.0)
        opt.step()
        history.append({k: float(v) for k, v in terms.items()})
    assert {"ce", "aam_txt1", "aam_txt2", "aam_txt3", "aam_img1", "gam"} <= history[0].keys()
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["aam_txt3"] < history[0]["aam_txt3"]


def test_text_aam_stage_i_is_the_query_stream_after_layer_i() -> None:
    """Decoder stage 1's term reaches layer 1 (its content-side norm and attention included)
    and no later layer: the taps are the per-layer outputs, not the last one."""
    torch.manual_seed(0)
    student = Student(student_config("small", dropout=0.0, **TINY))
    system = DistillSystem(student, DIMS)
    system(_batch(student))["aam_txt1"].backward()
    grads = {n: p.grad for n, p in student.named_parameters()}
    for name in ("dec_layers.0.norm_c.weight", "dec_layers.0.self_attn.in_proj_weight",
                 "dec_layers.0.norm_q.weight", "dec_norm.weight", "pos_queries",
                 "tok_embed.weight", "encoder.blocks.3.mlp.fc1.weight"):  # fmt: skip
        assert grads[name] is not None and float(grads[name].abs().sum()) > 0, name
    assert all(grads[n] is None for n in grads if n.startswith(("dec_layers.1.", "head.")))
