"""The common STR LMDB format: ``num-samples``, ``image-%09d``, ``label-%09d`` with 1-based keys.

This is how MJSynth, SynthText and every benchmark test set are distributed. The reader never
crashes mid-epoch on a bad record: a missing or non-UTF-8 label or an undecodable image is skipped
with a warning naming the LMDB and the index, and counted in `LmdbReader.skipped` (a label is never
guessed by replacing its bad bytes). A ``data.mdb`` shorter than the pages LMDB records is refused
on open: LMDB memory-maps the file, and reading a page past its end kills the process (SIGBUS).
A damaged page (LMDB's ``MDB_CORRUPTED``) is an `InputError` naming the LMDB and the key.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import lmdb
from PIL import Image

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import decode_image

log = logging.getLogger(__name__)

SKIP_MISSING_IMAGE = "missing_image"
SKIP_MISSING_LABEL = "missing_label"
SKIP_CORRUPT_IMAGE = "corrupt_image"
SKIP_LABEL_NOT_UTF8 = "label_not_utf8"
_NEARLY_FULL = 16 << 20  # bytes free below which a failed LMDB write is put down to a full disk


def is_lmdb_dir(path: Path) -> bool:
    return (path / "data.mdb").is_file()


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class LmdbReader:
    """Iterates one STR LMDB; `skipped` counts skipped records by reason."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such LMDB")
        if not is_lmdb_dir(self.path):
            raise InputError(f"{self.path}: not an LMDB (no data.mdb)")
        try:
            self._env = lmdb.open(
                str(self.path), readonly=True, lock=False, readahead=False, meminit=False
            )
        except lmdb.Error as err:
            raise InputError(f"{self.path}: cannot open LMDB ({err})") from None
        try:  # py-lmdb refuses to open an environment twice: never leave a refused one open
            self._check_size()
            self.num_samples = self._num_samples()
        except BaseException:
            self._env.close()
            raise
        self.skipped: Counter[str] = Counter()

    def _check_size(self) -> None:
        """Refuse a truncated ``data.mdb`` (a partial copy or download) before any page is read.

        The meta pages give the last page in use; the file must reach its end."""
        data = self.path / "data.mdb"
        need = (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]
        have = data.stat().st_size
        if have < need:
            raise InputError(
                f"{data}: truncated ({have} of {need} bytes that its LMDB pages need); "
                "copy or download it again"
            )

    def _get(self, txn: lmdb.Transaction, key: bytes) -> bytes | None:
        """`txn.get`, with a damaged B-tree page (not one bad record: it loses a whole range of
        them, and LMDB has no checksums to find which) reported as bad input."""
        try:
            return txn.get(key)
        except lmdb.Error as err:
            raise InputError(
                f"{self.path}: LMDB corrupted at key {key.decode()} ({err}); "
                "copy or download it again"
            ) from None

    def _num_samples(self) -> int:
        with self._env.begin() as txn:
            raw = self._get(txn, b"num-samples")
        if raw is None:
            raise InputError(f"{self.path}: LMDB has no 'num-samples' key")
        try:
            count = int(raw)
        except ValueError:
            raise InputError(f"{self.path}: 'num-samples' is not an integer: {raw!r}") from None
        # Each sample is two keys; a count beyond every key there is (or a negative one) is not
        # a few missing records but a wrong header, and would be read as 0 or as hours of
        # "missing" records. Fewer missing records than that are skipped and counted instead.
        keys = self._env.stat()["entries"]
        if count < 0 or count > keys:
            raise InputError(
                f"{self.path}: 'num-samples' is {count}, but the LMDB holds {keys} keys "
                f"(≈ {(keys - 1) // 2} samples); fix or recreate its 'num-samples' key"
            )
        if count == 0 and keys > 1:
            raise InputError(
                f"{self.path}: 'num-samples' is 0, but the LMDB holds {keys - 1} other keys; "
                "fix or recreate its 'num-samples' key"
            )
        return count

    def __len__(self) -> int:
        return self.num_samples

    def _skip(self, index: int, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        log.warning("%s: sample %d skipped (%s)%s", self.path, index, reason, detail)

    def iter_raw(self, skip_bad: bool = True) -> Iterator[tuple[int, bytes | None, str | None]]:
        """Yield ``(index, image_bytes, label)`` in order, without decoding.

        With `skip_bad`, records missing either part or with a non-UTF-8 label are skipped (and
        counted); without it they are yielded with ``None`` in place of the missing or undecodable
        part, so an evaluator can count them instead of scoring a guess.
        """
        with self._env.begin() as txn:
            for index in range(1, self.num_samples + 1):
                raw_label = self._get(txn, b"label-%09d" % index)
                image = self._get(txn, b"image-%09d" % index)
                if skip_bad and raw_label is None:
                    self._skip(index, SKIP_MISSING_LABEL)
                    continue
                label = None if raw_label is None else _utf8(raw_label)
                if raw_label is not None and label is None:
                    if skip_bad:
                        self._skip(index, SKIP_LABEL_NOT_UTF8)
                        continue
                    log.warning("%s: sample %d: label is not UTF-8, read as none", self.path, index)
                if skip_bad and image is None:
                    self._skip(index, SKIP_MISSING_IMAGE)
                    continue
                yield index, None if image is None else bytes(image), label

    def __iter__(self) -> Iterator[tuple[int, Image.Image, str]]:
        """Yield ``(index, RGB image, raw label)``, skipping undecodable images with a warning."""
        for index, data, label in self.iter_raw():
            try:
                img = decode_image(data)
            except Exception as err:  # PIL raises many types on corrupt data
                self._skip(index, SKIP_CORRUPT_IMAGE, f": {err}")
                continue
            yield index, img, label

    def close(self) -> None:
        self._env.close()


class LmdbWriter:
    """Writes an STR LMDB under a temporary name; it appears at `path` only when closed cleanly.

    A failed write (LMDB reports a full disk as an I/O error) drops the temporary LMDB and is an
    `InputError` naming `path`: nothing half-written is left, under either name.
    """

    def __init__(self, path: str | Path, map_size: int = 1 << 36, commit_every: int = 1000):
        self.path = Path(path)
        if self.path.exists():
            raise InputError(f"{self.path}: already exists; remove it or choose another --out")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        self._env = lmdb.open(str(self._tmp), map_size=map_size)
        self._txn = self._env.begin(write=True)
        self._commit_every = commit_every
        self._done = False
        self.count = 0

    def add(self, image: bytes, label: str) -> int:
        """Append one sample; returns its 1-based index."""
        self.count += 1
        try:
            self._txn.put(b"image-%09d" % self.count, image)
            self._txn.put(b"label-%09d" % self.count, label.encode("utf-8"))
            if self.count % self._commit_every == 0:
                self._txn.commit()
                self._txn = self._env.begin(write=True)
        except lmdb.Error as err:
            raise self._failed(err) from None
        return self.count

    def write_text(self, name: str, text: str) -> None:
        """A side file (e.g. ``synth.json``) inside the LMDB folder, published with it."""
        try:
            (self._tmp / name).write_text(text)
        except OSError as err:
            raise self._failed(err) from None

    def close(self) -> None:
        try:
            self._txn.put(b"num-samples", str(self.count).encode())
            self._txn.commit()
        except lmdb.Error as err:
            raise self._failed(err) from None
        self._env.close()
        self._tmp.rename(self.path)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(lmdb.Error):  # a transaction a failed commit already ended
            self._txn.abort()
        self._env.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _failed(self, err: Exception) -> InputError:
        """Drop the unfinished LMDB and say so (checking for a full disk before freeing it)."""
        full = shutil.disk_usage(self._tmp.parent).free < _NEARLY_FULL
        self.abort()
        why = "the disk is full, " if full else ""
        return InputError(
            f"{self.path}: could not write the LMDB ({why}{err}); nothing was kept: "
            "free space and rerun"
        )

    def __enter__(self) -> LmdbWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
