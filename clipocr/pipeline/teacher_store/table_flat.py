"""A text-table part unpacked once per node into plain arrays, memory-mapped by every reader.

Reading a part whole into every trainer rank cost 23 KB per label kept and 48 KB at load (issue
22): MJ's ≈ 90 k words took 2.1 GB per rank, 1 M labels would not fit a node. A label is read
at random (a sample's label is any of the table's), and a compressed chunk holds 64 labels ×
every position, so reading through Zarr per sample would decompress ≈ 1.7 MB per tap for one
label. Instead the first reader on a node copies the part, chunk by chunk (each chunk's CRC32C
checked on the way), into one uncompressed ``.npy`` file per array under a node-local cache
folder, and every process maps those files read-only: the pages live once in the OS page cache,
shared by all DataLoader workers and all ranks of the node whatever the start method (fork,
spawn, forkserver), and only the rows of the labels in use are ever read from disk.

Layout of ``<cache>/part-NNNNNN-<key>/`` (`key` = the store URL, the part's identity, the row
mode, the taps and the codec, hashed): ``labels.npy`` (n,) UTF-8 bytes; ``offsets.npy`` (n+1,)
int64, label i owning text rows ``offsets[i]:offsets[i+1]``; per text tap ``<tap>.npy`` (rows, D)
in the stored dtype — L + 1 rows per label, or every position with `all_rows`; ``text_emb.npy``
(n, E); int codecs add ``<tap>_scale.npy`` (one float32 per row) and ``<tap>_chscale.npy`` (D,).
The folder is written under a temporary name and renamed into place complete, and one process
per node unpacks while the others wait on a lock file, so a crash leaves nothing half-written
under the final name. The cache folder is ``$CLIPOCR_TABLE_CACHE``, else
``<tempdir>/clipocr-table-<uid>``; it may be deleted whenever no run reads it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store.codecs import Codec
from clipocr.pipeline.teacher_store.integrity import array_problems, table_shapes
from clipocr.pipeline.teacher_store.location import Location
from clipocr.pipeline.teacher_store.spec import STAGES_TEXT
from clipocr.pipeline.teacher_store.streams import Encoded, Rows
from clipocr.pipeline.teacher_store.table_parts import (
    as_bytes,
    part_identity,
    part_name,
    part_path,
)

CACHE_ENV = "CLIPOCR_TABLE_CACHE"
FLAT_VERSION = 1
_DONE = "flat.json"


def cache_root(explicit: str | Path | None = None) -> Path:
    """Where unpacked parts live: `explicit`, else ``$CLIPOCR_TABLE_CACHE``, else a folder of
    this user under the system's temporary directory (node-local on clusters)."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(tempfile.gettempdir()) / f"clipocr-table-{os.getuid()}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file; where the file system has no locks, no lock (the rename into
    place is still exclusive: a second unpacker finds the folder there and drops its copy)."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def _read(array: zarr.Array, a: int, b: int, where: str) -> np.ndarray:
    try:
        return array[a:b]
    except Exception as err:  # checksum mismatch, codec or I/O error
        raise InputError(
            f"{where}: chunk at label {a} unreadable ({type(err).__name__}: {err}); the store "
            "is damaged: rerun cache-teacher into a new store"
        ) from None


class FlatPart:
    """One complete part of a store's text table, unpacked on first use and memory-mapped."""

    def __init__(self, loc: Location, number: int, attrs: dict, taps: tuple[str, ...],
                 codec: Codec, all_rows: bool, root: Path) -> None:  # fmt: skip
        self.loc, self.number, self.attrs = loc, number, attrs
        self.taps, self.codec, self.all_rows = taps, codec, all_rows
        self.where = loc.child(part_path(number))
        self.count = int(attrs["count"])
        self.positions = int(attrs["positions"])
        ident = [FLAT_VERSION, loc.url, part_identity(number, attrs), all_rows, list(taps),
                 codec.name]  # fmt: skip
        key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]
        self.root = root
        self.dir = root / f"{part_name(number)}-{key}"
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        """Pickled for spawned DataLoader workers without its maps (each process maps anew)."""
        return self.__dict__ | {"_arrays": None}

    # -- the unpacked copy -------------------------------------------------------------------
    def ensure(self) -> Path:
        """Unpack the part unless this node has it already; returns its folder."""
        if (self.dir / _DONE).exists():
            return self.dir
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with _locked(self.root / f"{self.dir.name}.lock"):
                if not (self.dir / _DONE).exists():
                    self._unpack_into_place()
        except OSError as err:
            raise InputError(
                f"{self.root}: cannot unpack text-table part {self.number} of {self.loc} here "
                f"({err.strerror or err}); free space or point ${CACHE_ENV} at a local folder "
                "with room"
            ) from None
        return self.dir

    def _unpack_into_place(self) -> None:
        tmp = self.root / f".tmp-{uuid.uuid4().hex}-{self.dir.name}"
        try:
            tmp.mkdir()
            self._unpack(tmp)
            (tmp / _DONE).write_text(json.dumps({"store": self.loc.url, "part": self.number}))
            try:
                os.rename(tmp, self.dir)
            except OSError as err:  # unpacked meanwhile by a process that took no lock
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _open_group(self) -> zarr.Group:
        try:
            group = zarr.open_group(self.where, mode="r")
            dims = {("text" if t in STAGES_TEXT else "emb"): int(group[t].shape[-1])
                    for t in self.taps}  # fmt: skip
            shapes = table_shapes(self.taps, dims, self.codec, self.count, self.positions)
            problems = array_problems(group, shapes)
        except Exception as err:  # metadata deleted or garbled
            problems = [f"unreadable ({type(err).__name__}: {err})"]
        if problems:
            raise InputError(
                f"{self.where}: text-table part does not hold what it counts: "
                f"{'; '.join(problems)}; the store is damaged: rerun cache-teacher into a new store"
            )
        return group

    def _unpack(self, tmp: Path) -> None:
        group = self._open_group()
        labels = _read(group["labels"], 0, self.count, f"{self.where}/labels").tolist()
        lengths = np.array([self.positions if self.all_rows else len(s) + 1 for s in labels],
                           np.int64)  # fmt: skip
        if len(lengths) and lengths.max() > self.positions:
            raise InputError(f"{self.where}: a label is longer than the part's positions")
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        np.save(tmp / "labels.npy", as_bytes(labels))
        np.save(tmp / "offsets.npy", offsets)
        # Taps side by side: decompression, row selection and file writes release the GIL.
        with ThreadPoolExecutor(len(self.taps)) as pool:
            jobs = [pool.submit(self._unpack_tap, group, t, lengths, offsets, tmp)
                    for t in self.taps]  # fmt: skip
            for job in jobs:
                job.result()

    def _unpack_tap(self, group: zarr.Group, tap: str, lengths: np.ndarray, offsets: np.ndarray,
                    tmp: Path) -> None:  # fmt: skip
        arr, text, has_scale = group[tap], tap in STAGES_TEXT, self.codec.has_scale
        shape = (int(offsets[-1]) if text else self.count, int(arr.shape[-1]))
        out = np.lib.format.open_memmap(tmp / f"{tap}.npy", "w+", arr.dtype, shape)
        scale_out = (np.lib.format.open_memmap(tmp / f"{tap}_scale.npy", "w+", np.float32,
                                               shape[:1]) if has_scale else None)  # fmt: skip
        step = int(arr.chunks[0])
        for a in range(0, self.count, step):
            b = min(a + step, self.count)
            x = _read(arr, a, b, f"{self.where}/{tap}")
            s = _read(group[f"{tap}_scale"], a, b, f"{self.where}/{tap}_scale") if has_scale \
                else None  # fmt: skip
            if text:
                valid = np.arange(self.positions)[None, :] < lengths[a:b, None]
                x, s = x[valid], (s[valid] if s is not None else None)
            lo, hi = (int(offsets[a]), int(offsets[b])) if text else (a, b)
            out[lo:hi] = x
            if scale_out is not None:
                scale_out[lo:hi] = s
        out.flush()
        if scale_out is not None:
            scale_out.flush()
        ch = f"{tap}_chscale"
        if self.codec.per_channel and ch in group:
            np.save(tmp / f"{ch}.npy", _read(group[ch], 0, int(arr.shape[-1]), ch))

    # -- reading -----------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the unpacked part, memory-mapped (opened once per process)."""
        if self._arrays is None:
            folder = self.ensure()
            arrays = {p.stem: np.load(p, mmap_mode="r") for p in folder.glob("*.npy")}
            for name in [n for n in arrays if n.endswith("_chscale")]:
                arrays[name] = np.array(arrays[name])  # (D,), used by every sample
            if len(arrays["labels"]) != self.count:
                raise InputError(f"{folder}: unpacked copy of {self.where} is damaged; delete it")
            self._arrays = arrays
        return self._arrays

    def label(self, row: int) -> str:
        return bytes(self.arrays()["labels"][row]).decode("utf-8")

    def sample(self, row: int) -> dict[str, Rows]:
        """Label `row`'s text rows per tap (L + 1, or every position with `all_rows`) and its
        embedding, as compact copies in the stored dtype."""
        a = self.arrays()
        lo, hi = int(a["offsets"][row]), int(a["offsets"][row + 1])
        out: dict[str, Rows] = {}
        for tap in self.taps:
            at = slice(lo, hi) if tap in STAGES_TEXT else row
            data = np.array(a[tap][at])
            if self.codec.has_scale:
                chscale = a.get(f"{tap}_chscale")
                out[tap] = Encoded(data, np.array(a[f"{tap}_scale"][at]), chscale)
            else:
                out[tap] = data
        return out

    def unpacked_bytes(self) -> int:
        """Bytes of the unpacked copy on this node (what the page cache may hold of it)."""
        return sum(p.stat().st_size for p in self.ensure().glob("*.npy"))
