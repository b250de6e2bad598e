"""Shared fixtures: tiny STR data made here, never downloaded."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from clipocr.pipeline.lmdb_io import LmdbWriter

torch.set_num_threads(1)


def text_image(text: str, fmt: str = "PNG", size: tuple[int, int] = (100, 32)) -> bytes:
    """A plain black-on-white rendering of `text`, encoded as `fmt`."""
    img = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(img).text((4, 8), text, fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def run_console(main, prog: str, capsys, monkeypatch, *args: object) -> tuple[int, str, str]:
    """Run a console-script `main` with `args` as its argv: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [prog, *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def write_lmdb(path: Path, samples: list[tuple[bytes, str]]) -> Path:
    with LmdbWriter(path) as writer:
        for image, label in samples:
            writer.add(image, label)
    return path


@pytest.fixture
def small_lmdb(tmp_path: Path) -> Path:
    words = ["hello", "World", "42", "don't", "abc", "test", "x1y2", "zebra"]
    return write_lmdb(tmp_path / "small_lmdb", [(text_image(w), w) for w in words])


WORDS = ["hello", "world", "42", "abc", "test", "x1y2", "zebra", "ocr", "clip", "train",
         "stage", "token", "view", "shard", "batch", "model"]  # fmt: skip


def make_shards(root: Path, words: list[str], shard_size: int = 8) -> Path:
    """Words drawn plainly into an LMDB, prepared into tar shards under `root/shards`."""
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.shards import prepare_shards

    db = write_lmdb(root / "words_lmdb", [(text_image(w), w) for w in words])
    prepare_shards([db], root / "shards", Charset.from_name("36"), shard_size, progress=False)
    return root / "shards"


TINY_DIMS = {"image_tokens": 17, "image": 24, "text": 16, "emb": 12}


def fake_store(shard_dir: Path, out: Path, dims: dict = TINY_DIMS, seed: int = 0) -> Path:
    """A teacher store with random (but per-key deterministic) targets of the right shapes.

    Trainer tests need the store contract, not a real teacher; the caching job's own tests
    build stores from a real (tiny) open_clip model. Like the cache, it lists the samples whose
    image does not decode as missing instead of storing them.
    """
    import numpy as np

    from clipocr.pipeline.shards import iter_shard, shard_paths
    from clipocr.pipeline.teacher_store import StoreSpec, TeacherStoreWriter

    spec = StoreSpec(
        teacher={"model": "fake", "pretrained": None, "checksum": None},
        preprocessing={"image_size": [32, 128]},
        dims=dims,
    )
    writer = TeacherStoreWriter(out, spec)
    rng = np.random.default_rng(seed)
    for path in shard_paths(shard_dir):
        decoded = list(iter_shard(path))
        samples = [s for s in decoded if s[1] is not None]
        b = len(samples)
        lmax = max(len(lab) for _, _, lab in samples) + 1
        feats = {
            f"image_s{i}": rng.standard_normal((b, dims["image_tokens"], dims["image"]))
            for i in (1, 2, 3)
        }
        for i in (1, 2, 3):
            feats[f"text_s{i}"] = rng.standard_normal((b, lmax, dims["text"]))
        feats["text_emb"] = rng.standard_normal((b, dims["emb"]))
        feats["text_lengths"] = np.array([len(lab) + 1 for _, _, lab in samples])
        with writer.open_shard(path.stem) as group:
            group.append([k for k, _, _ in samples], feats)
            group.commit(missing=[k for k, image, _ in decoded if image is None])
    return out
