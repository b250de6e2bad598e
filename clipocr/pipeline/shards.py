"""WebDataset tar shards: `clipocr prepare` writes them, every job reads them.

Each sample holds the original image bytes (JPEG/PNG kept as they are, anything else re-encoded
to PNG) and the prepared label; ``shards.json`` records which source records each shard holds.
Its key ``<shard-stem>/<index>`` is stable: it is what joins an image to its cached teacher
targets (DESIGN §3, §5). The sources themselves (LMDB, image folder) are `clipocr.pipeline.sources`.

Shards are written by `webdataset.ShardWriter` under hidden temporary names and renamed by its
``post`` hook once closed, so a visible shard is always complete. The sequence of accepted samples
is a pure function of the sources and the charset, so an interrupted prepare resumes by skipping
the samples that the finished shards already hold: nothing is duplicated or lost. That holds only
for the same shard size, so the first finished shard's count is checked against it before
anything is skipped. A full disk stops the run with one line and leaves only finished shards.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from clipocr.pipeline.charset import Charset, LabelRejected
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import load_uint8
from clipocr.pipeline.shard_index import INDEX_NAME, load_index, shard_paths
from clipocr.pipeline.sources import RawSample, Source, open_source
from clipocr.pipeline.tar_stream import iter_tar_samples

log = logging.getLogger(__name__)

SHARD_PATTERN = "shard-%06d.tar"
SKIP_CORRUPT_IMAGE = "corrupt_image"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    sources: Iterable[Source], charset: Charset, skipped: Counter[str]
) -> Iterator[tuple[RawSample, str]]:
    for source in sources:
        for raw in source:
            try:
                label = charset.prepare(raw.label)
            except LabelRejected as rej:
                skipped[f"label_{rej.reason}"] += 1
                continue
            yield raw, label


@dataclass(frozen=True)
class ShardEntry:
    """One shard in ``shards.json``: its file name, sample count and provenance
    (source → ``[first, last]`` record index, so any key can be traced back)."""

    name: str
    count: int
    sources: dict[str, list[int]]


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare_shards` wrote: the ``shards.json`` index, typed (`to_json` is the file)."""

    charset: str
    max_len: int
    shard_size: int
    num_samples: int
    shards: list[ShardEntry]
    sources: list[str]
    skipped: dict[str, int]  # reason → count (label_too_long, label_empty, corrupt_image, …)

    def to_json(self) -> dict:
        return asdict(self)


def _disk_full(out: Path, err: OSError) -> InputError:
    return InputError(
        f"{out}: disk full while preparing shards ({err.strerror}); finished shards are kept: "
        "free space and rerun the same command to resume"
    )


def _size_mismatch(out: Path, first: int, shard_size: int) -> InputError:
    return InputError(
        f"{out}: the finished shards were written with --shard-size {first} ({SHARD_PATTERN % 0} "
        f"holds {first} samples), not {shard_size}; resume with --shard-size {first} "
        "or choose another --out"
    )


def _resume_limit(out: Path, done: int, shard_size: int) -> int | None:
    """Refuse to resume `done` finished shards that were cut at another size than `shard_size`.

    Skipping ``done × shard_size`` samples is right only if that is what they hold. The first
    shard tells: it holds exactly `shard_size` samples, or fewer if it was the last one of a
    smaller run. Which of the two is known only once the sources run past its count, so that
    count is returned for the write loop to check (``None``: nothing left to check).
    """
    if done == 0:
        return None
    path = out / (SHARD_PATTERN % 0)
    try:
        with tarfile.open(path) as tar:  # headers only: one ``.txt`` member per sample
            first = sum(1 for member in tar if member.name.endswith(".txt"))
    except (tarfile.TarError, OSError) as err:
        raise InputError(
            f"{path}: unreadable finished shard ({err}); delete it and rerun"
        ) from None
    if first == shard_size:
        return None
    if first > shard_size or done > 1:
        raise _size_mismatch(out, first, shard_size)
    return first


def _shard_writer(out: Path, shard_size: int, start: int) -> wds.ShardWriter:
    def finished(tmp_name: str) -> None:
        tmp = Path(tmp_name)
        os.replace(tmp, tmp.with_name(tmp.name.removeprefix(".tmp-")))

    return wds.ShardWriter(
        str(out / (".tmp-" + SHARD_PATTERN)),
        maxcount=shard_size,
        maxsize=1 << 40,
        start_shard=start,
        post=finished,
        verbose=0,
        # A fixed integer mtime keeps tar headers plain (no per-member pax header to parse on
        # every read) and makes shards byte-reproducible.
        mtime=0,
    )


def _write_shards(
    samples: Iterable[tuple[RawSample, str]],
    out: Path,
    shard_size: int,
    done: int,
    limit: int | None,
    skipped: Counter[str],
) -> tuple[dict[int, int], dict[int, dict[str, list[int]]]]:
    """Write every shard after the `done` finished ones; return each shard's count and
    provenance (finished shards included, as the index lists them all)."""
    to_skip = done * shard_size
    counts: dict[int, int] = {}
    origins: dict[int, dict[str, list[int]]] = {}
    # Opened at the first sample written, so a rerun with nothing left to write adds no shard.
    writer: wds.ShardWriter | None = None
    n = 0
    try:
        for raw, label in samples:
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
            if limit is not None and n > limit:  # the first shard was not the last: cut smaller
                raise _size_mismatch(out, limit, shard_size)
            if n <= to_skip:
                continue
            if writer is None:
                writer = _shard_writer(out, shard_size, done)
            stem = Path(SHARD_PATTERN % shard_no).stem
            writer.write({"__key__": f"{stem}/{(n - 1) % shard_size:06d}", ext: data, "txt": label})
        if writer is not None:
            writer.close()
    except BaseException:
        # Leave finished shards for the resume; close the half-written one without its `post`
        # rename (a full disk may fail that too), then drop it.
        stream = getattr(writer, "tarstream", None)
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
            writer.tarstream = None
        for stale in out.glob(".tmp-*"):
            stale.unlink()
        raise
    return counts, origins


def _write_index(out: Path, index: PrepareResult) -> None:
    tmp = out / (".tmp-" + INDEX_NAME)
    try:
        tmp.write_text(json.dumps(index.to_json(), indent=2))
        os.replace(tmp, out / INDEX_NAME)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in DISK_FULL:
            raise _disk_full(out, err) from None
        raise


def prepare_shards(
    inputs: list[str | Path],
    out: str | Path,
    charset: Charset,
    shard_size: int = 5000,
    progress: bool = True,
) -> PrepareResult:
    """Convert LMDBs / image folders into tar shards plus a ``shards.json`` index.

    Resumable: shards already finished by an interrupted run are kept and their samples skipped
    (the same `shard_size` is required). Returns the index that was written.
    """
    if not inputs:
        raise InputError("prepare: give at least one --lmdb / --folder source")
    if shard_size < 1:
        raise InputError(f"--shard-size {shard_size}: must be at least 1")
    with contextlib.ExitStack() as opened:  # closed even on error, so a retry can reopen them
        sources = []
        for path in inputs:
            sources.append(open_source(path))
            opened.callback(sources[-1].close)
        return _prepare(sources, Path(out), charset, shard_size, progress)


def _prepare(
    sources: list[Source], out: Path, charset: Charset, shard_size: int, progress: bool
) -> PrepareResult:
    index_path = out / INDEX_NAME
    if index_path.exists():
        raise InputError(f"{index_path}: shards already prepared here; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-*"):
        stale.unlink()

    done = 0
    while (out / (SHARD_PATTERN % done)).exists():
        done += 1
    limit = _resume_limit(out, done, shard_size)
    if done:
        log.warning("%s: resuming after %d finished shard(s)", out, done)

    skipped: Counter[str] = Counter()
    total = sum(len(s) for s in sources)
    with tqdm(total=total, desc="prepare", unit="img", disable=not progress) as bar:

        def counted() -> Iterator[tuple[RawSample, str]]:
            for item in _accepted(sources, charset, skipped):
                bar.update(1)
                yield item

        try:
            counts, origins = _write_shards(counted(), out, shard_size, done, limit, skipped)
        except OSError as err:
            if err.errno in DISK_FULL:
                raise _disk_full(out, err) from None
            raise
    if done > len(counts):
        raise InputError(
            f"{out}: holds {done} finished shards but these sources fill {len(counts)}; "
            "were they written from other sources? choose another --out"
        )
    for source in sources:
        skipped.update(source.skipped)
    n = sum(counts.values())
    if n == 0:
        raise InputError(f"prepare: no usable samples in {', '.join(s.name for s in sources)}")
    index = PrepareResult(
        charset=charset.name,
        max_len=charset.max_len,
        shard_size=shard_size,
        num_samples=n,
        shards=[ShardEntry(SHARD_PATTERN % i, counts[i], origins[i]) for i in sorted(counts)],
        sources=[s.name for s in sources],
        skipped=dict(sorted(skipped.items())),
    )
    _write_index(out, index)
    return index


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def iter_shard_raw(path: str | Path) -> Iterator[tuple[str, bytes, str]]:
    """Yield ``(key, image_bytes, label)`` of one shard in its stored order, streaming it:
    the first sample comes at once and memory holds one sample, not the shard.

    A sample without an image yields empty bytes (undecodable: the cache records it missing);
    one without a label is an `InputError`.
    """
    # Splitting across nodes/workers is the caller's business (it hands each worker whole
    # shards): a shard is always read in full.
    for key, parts in iter_tar_samples(path):
        if "txt" not in parts:
            raise InputError(f"{path}: sample {key} has no label (.txt); re-create the shard")
        yield key, parts.get("jpg") or parts.get("png") or b"", parts["txt"].decode("utf-8")


def iter_shard(
    path: str | Path, skipped: Counter[str] | None = None
) -> Iterator[tuple[str, torch.Tensor | None, str]]:
    """Yield ``(key, uint8 image (3, 32, 128), label)`` in shard order, decoded on the
    training-speed path (``draft``) that the teacher cache and the student share.

    An undecodable image yields ``None`` in place of the tensor (with a warning naming shard and
    key) so consumers that must keep alignment — the teacher cache — can record it as missing.
    """
    for key, data, label in iter_shard_raw(path):
        try:
            image = load_uint8(data, draft=True)
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
