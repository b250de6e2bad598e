"""Bytes per sample and fidelity of each teacher-store codec, for ViT-B/16 shapes (DESIGN §5).

Features come from a *random-init* open_clip ViT-B-16 (no weights are downloaded) run on rendered
words: image tokens = the first 17 tokens (class + 16, as many as the 32×128 crop pos-embed
gives) of the residual stream after blocks 3/6/9 at 224×224; text = residual streams after blocks
3/6/9 at c1..cL, EOT of the character-tokenised word; text_emb = the final text embedding.
They are stored in the ``normalised`` form (per-token LayerNorm without affine; unit text_emb).

Random init has no outlier channels, which trained CLIP ViTs do have, so a second variant
multiplies four channels of every stage by 20, 30, 40 and 50 before normalising.

Per codec: bytes/sample on disk (image / text / emb parts), max abs error, per-token cosine vs
float32 (mean and min), the worst channel's relative RMS error, and the relative change of a
CLIP-OCR LCL loss (DESIGN §6) against a student that is ~0.9 cosine to the teacher. Also the
relative loss change from storing normalised vs raw features.

    .venv/bin/python bench/bench_store_codecs.py [--num 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from wordfreq import top_n_list

from clipocr.pipeline.teacher_store import (
    STAGES_IMAGE,
    STAGES_TEXT,
    StoreSpec,
    TeacherStore,
    TeacherStoreWriter,
)

CODECS = [
    "zstd",
    "bitround-5",
    "bitround-4",
    "bitround-3",
    "int8-token",
    "int7-token",
    "int8-channel",
    "int7-channel",
    "int6-channel",
    "int5-channel",
]
IMAGE_TOKENS = 17
BLOCKS = (3, 6, 9)
OUTLIERS = {0: 20.0, 100: 30.0, 200: 40.0, 300: 50.0}  # channel → factor


def render(words: list[str]) -> torch.Tensor:
    """Words drawn at 32×128 then resized to 224×224, CLIP-normalised."""
    font_dir = Path(__import__("matplotlib").get_data_path()) / "fonts" / "ttf"
    fonts = [
        ImageFont.truetype(str(font_dir / f), 22) for f in ("DejaVuSans.ttf", "DejaVuSerif.ttf")
    ]
    rng = np.random.default_rng(0)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    out = []
    for i, word in enumerate(words):
        bg, fg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        img = Image.new("RGB", (128, 32), tuple(int(v) for v in bg))
        ImageDraw.Draw(img).text((4, 3), word, font=fonts[i % 2], fill=tuple(int(v) for v in fg))
        arr = np.asarray(img.resize((224, 224), Image.BICUBIC), np.float32) / 255.0
        out.append((torch.from_numpy(arr).permute(2, 0, 1) - mean) / std)
    return torch.stack(out)


def taps(blocks: torch.nn.ModuleList) -> list[torch.Tensor]:
    """Register hooks that collect the residual stream after BLOCKS (1-based)."""
    got: list[torch.Tensor] = []
    for b in BLOCKS:
        blocks[b - 1].register_forward_hook(lambda _m, _i, out: got.append(out.detach()))
    return got


@torch.inference_mode()
def teacher_features(num: int) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    """Raw float32 features: image (n, 17, 768), text padded (n, 26, 512), emb (n, 512)."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    lexicon = [w for w in top_n_list("en", 5000) if w.isalnum() and w.isascii()]
    words = list(np.random.default_rng(0).choice(lexicon, num, replace=False))  # mean length ~6.3
    img_got, txt_got = taps(model.visual.transformer.resblocks), taps(model.transformer.resblocks)
    images = render(words)
    text = open_clip.tokenize([" ".join(w) for w in words])
    feats: dict[str, list] = {t: [] for t in STAGES_IMAGE + STAGES_TEXT + ("text_emb",)}
    for a in range(0, num, 32):
        img_got.clear()
        txt_got.clear()
        model.encode_image(images[a : a + 32])
        emb = model.encode_text(text[a : a + 32], normalize=True)
        for tap, x in zip(STAGES_IMAGE, img_got, strict=True):
            feats[tap].append(x[:, :IMAGE_TOKENS])
        for tap, x in zip(STAGES_TEXT, txt_got, strict=True):
            feats[tap].append(x[:, 1:27])  # drop SOT; c1..cL, EOT (+ padding)
        feats["text_emb"].append(emb)
    lengths = np.array([len(w) + 1 for w in words])
    return words, {k: torch.cat(v).numpy() for k, v in feats.items()}, lengths


def normalise(x: np.ndarray) -> np.ndarray:
    """Per-token LayerNorm without affine (eps 1e-5): the `normalised` storage form."""
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def with_outliers(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(raw)
    for tap in STAGES_IMAGE + STAGES_TEXT:
        x = raw[tap].copy()
        for ch, factor in OUTLIERS.items():
            x[..., ch] *= factor
        out[tap] = x
    return out


def stored_form(raw: dict[str, np.ndarray], form: str) -> dict[str, np.ndarray]:
    if form == "raw":
        return dict(raw)
    out = {t: normalise(raw[t]) for t in STAGES_IMAGE + STAGES_TEXT}
    out["text_emb"] = raw["text_emb"] / np.linalg.norm(raw["text_emb"], axis=-1, keepdims=True)
    return out


def lcl(f: torch.Tensor, t: torch.Tensor, tau: float = 0.03) -> float:
    """CLIP-OCR's LCL (λ1 = 5, λ2 = 0.1) on row sets f (student) and t (teacher)."""
    f, t = F.normalize(f, dim=-1), F.normalize(t, dim=-1)
    intra = (f @ f.T - t @ t.T).abs().mean()
    inter = F.cross_entropy(f @ t.T / tau, torch.arange(len(f)))
    return float(5 * intra + 0.1 * inter)


def flat_rows(feats: dict[str, np.ndarray], lengths: np.ndarray, tap: str) -> np.ndarray:
    x = feats[tap]
    if tap in STAGES_TEXT and x.ndim == 3:
        x = x[np.arange(x.shape[1])[None] < lengths[:, None]]
    return x.reshape(-1, x.shape[-1])


def loss_change(ref: dict, got: dict, lengths: np.ndarray) -> float:
    """Worst relative change over taps of LCL(student, LN_t(target)).

    LN_t at its initialisation is norm(); GAM's target (text_emb) gets no LN, LCL L2-normalises it.
    """
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for tap in STAGES_IMAGE + STAGES_TEXT + ("text_emb",):
        ln = (lambda x: x) if tap == "text_emb" else normalise
        r = torch.from_numpy(ln(flat_rows(ref, lengths, tap)))
        g = torch.from_numpy(ln(flat_rows(got, lengths, tap)))
        student = r + 0.5 * torch.randn(r.shape, generator=gen)
        base = lcl(student, r)
        worst = max(worst, abs(lcl(student, g) - base) / base)
    return worst


def store_and_read(root: Path, feats: dict, lengths: np.ndarray, codec: str, form: str) -> dict:
    spec = StoreSpec(
        teacher={"model": "ViT-B-16", "pretrained": None, "checksum": "random-init"},
        preprocessing={"image_size": [224, 224]},
        dims={"image_tokens": IMAGE_TOKENS, "image": 768, "text": 512, "emb": 512},
        form=form,
        codec=codec,
    )
    n = len(lengths)
    writer = TeacherStoreWriter(root, spec, chunk_samples=128)
    t0 = time.perf_counter()
    with writer.open_shard("shard-000000") as group:
        for a in range(0, n, 64):
            b = min(n, a + 64)
            batch = {k: v[a:b] for k, v in feats.items()} | {"text_lengths": lengths[a:b]}
            group.append([f"shard-000000/{i:06d}" for i in range(a, b)], batch)
        group.commit()
    t_write = time.perf_counter() - t0
    store = TeacherStore(root)
    t0 = time.perf_counter()
    samples = [s for _, s in store.iter_shard("shard-000000")]
    t_read = time.perf_counter() - t0
    got = {t: np.stack([s[t] for s in samples]) for t in STAGES_IMAGE + ("text_emb",)}
    got |= {t: np.concatenate([s[t] for s in samples]) for t in STAGES_TEXT}
    part = {p: 0 for p in ("image", "text", "emb")}
    for d in (root / "shard-000000").iterdir():
        if d.is_dir():
            key = "emb" if d.name.startswith("text_emb") else d.name.split("_")[0]
            part[key if key in part else "text"] += sum(
                f.stat().st_size for f in d.rglob("*") if f.is_file()
            )
    return {
        "got": got,
        "bytes": store.nbytes("shard-000000") / n,
        "parts": {k: v / n for k, v in part.items()},
        "write_sps": n / t_write,
        "read_sps": n / t_read,
    }


def fidelity(ref: dict, got: dict, lengths: np.ndarray) -> dict:
    cos, maxerr, chan = [], 0.0, 0.0
    for tap in STAGES_IMAGE + STAGES_TEXT + ("text_emb",):
        r = flat_rows(ref, lengths, tap).astype(np.float64)
        g = flat_rows(got, lengths, tap).astype(np.float64)
        cos.append((r * g).sum(-1) / np.linalg.norm(r, axis=-1) / np.linalg.norm(g, axis=-1))
        maxerr = max(maxerr, float(np.abs(r - g).max()))
        rel = np.sqrt(((r - g) ** 2).mean(0)) / np.sqrt((r**2).mean(0))
        chan = max(chan, float(rel.max()))
    c = np.concatenate(cos)
    return {"cos_mean": c.mean(), "cos_min": c.min(), "maxerr": maxerr, "chan": chan}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--num", type=int, default=256, help="number of rendered words")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    words, raw, lengths = teacher_features(args.num)
    print(
        f"teacher features for {len(words)} words in {time.perf_counter() - t0:.0f} s; "
        f"mean label length {lengths.mean() - 1:.2f}"
    )
    fp16 = (IMAGE_TOKENS * 768 * 3 + lengths.mean() * 512 * 3 + 512) * 2
    print(f"uncompressed float16: {fp16 / 1e3:.1f} KB/sample\n")
    head = (
        f"{'variant':<9} {'codec':<13} {'KB/smp':>7} {'img':>6} {'text':>5} {'emb':>4} "
        f"{'maxerr':>8} {'cos mean':>9} {'cos min':>9} {'chan err':>8} {'dLCL rel':>8} "
        f"{'w smp/s':>7} {'r smp/s':>7}"
    )
    for variant, base in (("plain", raw), ("outliers", with_outliers(raw))):
        print(head)
        ref = stored_form(base, "normalised")
        best = None
        for codec in CODECS:
            with tempfile.TemporaryDirectory() as tmp:
                res = store_and_read(Path(tmp) / "s", ref, lengths, codec, "normalised")
            fid = fidelity(ref, res["got"], lengths)
            dl = loss_change(ref, res["got"], lengths)
            p = res["parts"]
            print(
                f"{variant:<9} {codec:<13} {res['bytes'] / 1e3:7.1f} {p['image'] / 1e3:6.1f} "
                f"{p['text'] / 1e3:5.1f} {p['emb'] / 1e3:4.1f} {fid['maxerr']:8.2e} "
                f"{fid['cos_mean']:9.6f} {fid['cos_min']:9.6f} {fid['chan']:8.2e} {dl:8.1e} "
                f"{res['write_sps']:7.0f} {res['read_sps']:7.0f}"
            )
            if fid["cos_min"] >= 0.999 and (best is None or res["bytes"] < best[1]):
                best = (codec, res["bytes"])
        print(
            f"-> smallest with min per-token cosine >= 0.999: {best[0]} at "
            f"{best[1] / 1e3:.1f} KB/sample\n"
        )
        # raw vs normalised storage: the loss with LN_t applied on top of each
        with tempfile.TemporaryDirectory() as tmp:
            res_raw = store_and_read(
                Path(tmp) / "s", stored_form(base, "raw"), lengths, "zstd", "raw"
            )
        raw32 = stored_form(base, "raw")
        d_form = loss_change(raw32, ref, lengths)
        d_raw16 = loss_change(raw32, res_raw["got"], lengths)
        print(
            f"{variant}: raw form, zstd: {res_raw['bytes'] / 1e3:.1f} KB/sample; rel. LCL change "
            f"LN(norm(F)) vs LN(F) in float32: {d_form:.1e}; "
            f"raw stored f16 vs float32: {d_raw16:.1e}\n"
        )


if __name__ == "__main__":
    main()
