"""Shared fixtures: tiny STR data made here, never downloaded."""

from __future__ import annotations

import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# One thread per test process, set before numpy/torch load their thread pools: the suite runs on
# every core (pytest-xdist), and a second OpenMP/OpenBLAS thread per process only spins against
# the other workers (measured: a tiny training test took 94 s instead of 16 s on 2 busy cores).
# Subprocesses the tests start inherit it; tests of the thread rules set their own environment.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from clipocr.pipeline.lmdb_io import LmdbWriter  # noqa: E402

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


@dataclass(frozen=True)
class OverfitRun:
    """A `test`-preset student trained (distilled from a fake store) to read its 16 WORDS."""

    shards: Path  # the 16 WORDS in one shard
    store: Path  # their fake teacher store
    run: Path  # the run folder (history.jsonl, student.safetensors)
    images: Path  # the same 16 words as image files 000.png … 015.png
    labels: list[str]  # the words, in file order

    @property
    def student(self) -> Path:
        return self.run / "student.safetensors"


def _shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder for `name` that every pytest-xdist worker of this session sees (the session's
    base temp folder; without xdist, this process's own)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/popen-gwK -> pytest-N, unique to this session
    return base / name


@pytest.fixture(scope="session")
def overfit_run(tmp_path_factory: pytest.TempPathFactory) -> OverfitRun:
    """Train once per test session, whichever xdist worker gets there first (the others wait
    on a file lock and reuse it): the one trained student the trainer and `read` tests share.

    150 steps at lr 0.1 on one batch of 16 is the shortest run that reads all 16 words
    (measured: 120 steps read 9, 100 steps 2); ≈ 15 CPU-seconds."""
    from filelock import FileLock

    from clipocr.train_student.config import TrainConfig
    from clipocr.train_student.trainer import Trainer

    root = _shared_dir(tmp_path_factory, "overfit")
    root.mkdir(parents=True, exist_ok=True)
    done = root / "done"
    with FileLock(str(root / ".lock")):
        if not done.exists():
            for part in ("shards", "store", "run", "images", "words_lmdb"):
                shutil.rmtree(root / part, ignore_errors=True)  # a failed earlier try
            shards = make_shards(root, WORDS, shard_size=16)
            fake_store(shards, root / "store")
            cfg = TrainConfig(
                shards=str(shards), teacher_store=str(root / "store"), out=str(root / "run"),
                preset="test", batch_size=16, lr=0.1, max_steps=150, augment=False,
                shuffle_buffer=1, warmup_pct=0.1, workers=0, threads=1, progress=False,
                ckpt_every=1000, log_every=10,
            )  # fmt: skip
            Trainer(cfg).run()
            (root / "images").mkdir()
            for i, word in enumerate(WORDS):
                (root / "images" / f"{i:03d}.png").write_bytes(text_image(word))
            done.touch()
    return OverfitRun(root / "shards", root / "store", root / "run", root / "images", list(WORDS))
