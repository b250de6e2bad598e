"""WebDataset tar shards: `clipocr prepare` writes them, every job reads them.

Each sample holds the original image bytes (JPEG/PNG kept as they are, anything else re-encoded
to PNG) and the prepared label; ``shards.json`` records which source records each shard holds.
Its key ``<shard-stem>/<index>`` is stable: it is what joins an image to its cached teacher
targets (DESIGN §3, §5).

Shards are written by `webdataset.ShardWriter` under hidden temporary names and renamed by its
``post`` hook once closed, so a visible shard is always complete. The sequence of accepted samples
is a pure function of the sources and the charset, so an interrupted prepare resumes by skipping
the samples that the finished shards already hold: nothing is duplicated or lost.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from clipocr.pipeline.charset import Charset, LabelRejected
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import LmdbReader, is_lmdb_dir
from clipocr.pipeline.preprocess import load_uint8

log = logging.getLogger(__name__)

INDEX_NAME = "shards.json"
SHARD_PATTERN = "shard-%06d.tar"
SKIP_CORRUPT_IMAGE = "corrupt_image"


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
@dataclass
class RawSample:
    """One record of a source, before label preparation."""

    source: str
    index: int
    image: bytes
    label: str


class ImageFolderSource:
    """A folder with images and a ``labels.tsv`` of ``relpath<TAB>label`` lines."""

    def __init__(self, root: str | Path, labels_name: str = "labels.tsv") -> None:
        self.root = Path(root)
        self.labels_path = self.root / labels_name
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such folder")
        if not self.labels_path.is_file():
            raise InputError(f"{self.root}: no {labels_name} (expected relpath<TAB>label lines)")
        self.entries: list[tuple[int, str, str]] = []
        with open(self.labels_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n\r")
                if not line.strip():
                    continue
                parts = line.split("\t", 1)
                if len(parts) != 2 or not parts[0]:
                    raise InputError(
                        f"{self.labels_path}:{lineno}: malformed line {line[:60]!r} "
                        "(expected relpath<TAB>label)"
                    )
                self.entries.append((lineno, parts[0], parts[1]))
        if not self.entries:
            raise InputError(f"{self.labels_path}: no samples listed")
        self.skipped: Counter[str] = Counter()

    @property
    def name(self) -> str:
        return str(self.root)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[RawSample]:
        for lineno, rel, label in self.entries:
            path = self.root / rel
            try:
                data = path.read_bytes()
            except OSError as err:
                self.skipped["missing_image"] += 1
                log.warning("%s:%d: %s skipped (%s)", self.labels_path, lineno, rel, err)
                continue
            yield RawSample(self.name, lineno, data, label)


class LmdbSource:
    """An STR LMDB as a prepare source."""

    def __init__(self, path: str | Path) -> None:
        self.reader = LmdbReader(path)

    @property
    def name(self) -> str:
        return str(self.reader.path)

    @property
    def skipped(self) -> Counter[str]:
        return self.reader.skipped

    def __len__(self) -> int:
        return len(self.reader)

    def __iter__(self) -> Iterator[RawSample]:
        for index, data, label in self.reader.iter_raw():
            yield RawSample(self.name, index, data, label)


def open_source(path: str | Path) -> LmdbSource | ImageFolderSource:
    """An LMDB folder (has data.mdb) or an image folder with labels.tsv."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if is_lmdb_dir(path):
        return LmdbSource(path)
    if path.is_dir():
        if not any(path.iterdir()):
            raise InputError(f"{path}: folder is empty")
        return ImageFolderSource(path)
    raise InputError(f"{path}: neither an LMDB folder nor an image folder with labels.tsv")


def _image_ext(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def _as_jpeg_or_png(data: bytes) -> tuple[str, bytes]:
    """Keep JPEG/PNG bytes untouched; re-encode anything else PIL can read as PNG."""
    ext = _image_ext(data)
    if ext is not None:
        return ext, data
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="PNG")
    return "png", buf.getvalue()


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------
def _accepted(
    sources: Iterable[LmdbSource | ImageFolderSource], charset: Charset, skipped: Counter[str]
) -> Iterator[tuple[RawSample, str]]:
    for source in sources:
        for raw in source:
            try:
                label = charset.prepare(raw.label)
            except LabelRejected as rej:
                skipped[f"label_{rej.reason}"] += 1
                continue
            yield raw, label


def prepare_shards(
    inputs: list[str | Path],
    out: str | Path,
    charset: Charset,
    shard_size: int = 5000,
    progress: bool = True,
) -> dict:
    """Convert LMDBs / image folders into tar shards plus a ``shards.json`` index.

    Resumable: shards already finished by an interrupted run are kept and their samples skipped.
    Returns the index that was written.
    """
    if not inputs:
        raise InputError("prepare: give at least one --lmdb / --folder source")
    sources = [open_source(p) for p in inputs]
    out = Path(out)
    index_path = out / INDEX_NAME
    if index_path.exists():
        raise InputError(f"{index_path}: shards already prepared here; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-*"):
        stale.unlink()

    done = 0
    while (out / (SHARD_PATTERN % done)).exists():
        done += 1
    to_skip = done * shard_size
    if done:
        log.warning("%s: resuming after %d finished shard(s)", out, done)

    counts: dict[int, int] = {}
    # Provenance per shard: source → [first, last] record index, so any key can be traced back.
    origins: dict[int, dict[str, list[int]]] = {}

    def finished(tmp_name: str) -> None:
        tmp = Path(tmp_name)
        final = tmp.with_name(tmp.name.removeprefix(".tmp-"))
        os.replace(tmp, final)

    skipped: Counter[str] = Counter()
    total = sum(len(s) for s in sources)
    bar = tqdm(total=total, desc="prepare", unit="img", disable=not progress)
    writer = wds.ShardWriter(
        str(out / (".tmp-" + SHARD_PATTERN)),
        maxcount=shard_size,
        maxsize=1 << 40,
        start_shard=done,
        post=finished,
        verbose=0,
        # A fixed integer mtime keeps tar headers plain (no per-member pax header to parse on
        # every read) and makes shards byte-reproducible.
        mtime=0,
    )
    n = 0
    try:
        for raw, label in _accepted(sources, charset, skipped):
            bar.update(1)
            # Checked before the resume skip, so the sequence of kept samples is the same
            # whether or not earlier shards are being skipped.
            try:
                ext, data = _as_jpeg_or_png(raw.image)
            except Exception as err:
                skipped[SKIP_CORRUPT_IMAGE] += 1
                log.warning("%s: sample %d skipped (corrupt image: %s)", raw.source, raw.index, err)
                continue
            shard_no = n // shard_size
            counts[shard_no] = counts.get(shard_no, 0) + 1
            span = origins.setdefault(shard_no, {}).setdefault(raw.source, [raw.index, raw.index])
            span[1] = raw.index
            n += 1
            if n <= to_skip:
                continue
            stem = Path(SHARD_PATTERN % shard_no).stem
            writer.write({"__key__": f"{stem}/{(n - 1) % shard_size:06d}", ext: data, "txt": label})
        writer.close()
    except BaseException:
        # Leave finished shards for the resume; close the half-written one without its `post`
        # rename, then drop it.
        if writer.tarstream is not None:
            writer.tarstream.close()
            writer.tarstream = None
        for stale in out.glob(".tmp-*"):
            stale.unlink()
        raise
    finally:
        bar.close()
    for source in sources:
        skipped.update(source.skipped)
    if n == 0:
        raise InputError(f"prepare: no usable samples in {', '.join(map(str, inputs))}")
    index = {
        "charset": charset.name,
        "max_len": charset.max_len,
        "shard_size": shard_size,
        "num_samples": n,
        "shards": [
            {"name": SHARD_PATTERN % i, "count": counts[i], "sources": origins[i]}
            for i in sorted(counts)
        ],
        "sources": [s.name for s in sources],
        "skipped": dict(sorted(skipped.items())),
    }
    tmp_index = out / (".tmp-" + INDEX_NAME)
    tmp_index.write_text(json.dumps(index, indent=2))
    os.replace(tmp_index, index_path)
    return index


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def load_index(shard_dir: str | Path) -> dict:
    """The ``shards.json`` of a prepared folder, or an InputError saying what is missing."""
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise InputError(f"{shard_dir}: no such shard folder")
    path = shard_dir / INDEX_NAME
    if not path.is_file():
        raise InputError(f"{path}: missing; run `clipocr prepare` (or let it finish) first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


def shard_paths(shard_dir: str | Path) -> list[Path]:
    """Paths of the shards listed in the index, in order; each must exist."""
    shard_dir = Path(shard_dir)
    paths = [shard_dir / s["name"] for s in load_index(shard_dir)["shards"]]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: listed in {INDEX_NAME} but missing")
    return paths


def iter_shard_raw(path: str | Path) -> Iterator[tuple[str, bytes, str]]:
    """Yield ``(key, image_bytes, label)`` of one shard, in its stored order."""
    # Splitting across nodes/workers is the caller's business (it hands each worker whole
    # shards), so webdataset's own splitters are off: a shard is always read in full.
    dataset = wds.WebDataset(
        str(path), shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None
    )
    for sample in dataset:
        data = sample.get("jpg") or sample.get("png")
        label = sample["txt"].decode("utf-8")
        yield sample["__key__"], data, label


def iter_shard(
    path: str | Path, skipped: Counter[str] | None = None
) -> Iterator[tuple[str, torch.Tensor | None, str]]:
    """Yield ``(key, uint8 image (3, 32, 128), label)`` in shard order.

    An undecodable image yields ``None`` in place of the tensor (with a warning naming shard and
    key) so consumers that must keep alignment — the teacher cache — can record it as missing.
    """
    for key, data, label in iter_shard_raw(path):
        try:
            image = load_uint8(data)
        except Exception as err:
            log.warning("%s: sample %s has an undecodable image (%s)", path, key, err)
            if skipped is not None:
                skipped[SKIP_CORRUPT_IMAGE] += 1
            image = None
        yield key, image, label


class ShardReader:
    """All shards of a prepared folder in order, as ``(key, uint8 image, label)``.

    Undecodable images are skipped (warned and counted in `skipped`).
    """

    def __init__(self, shard_dir: str | Path) -> None:
        self.paths = shard_paths(shard_dir)
        self.index = load_index(shard_dir)
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return int(self.index["num_samples"])

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor, str]]:
        for path in self.paths:
            for key, image, label in iter_shard(path, self.skipped):
                if image is not None:
                    yield key, image, label
