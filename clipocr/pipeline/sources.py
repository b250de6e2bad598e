"""What `clipocr prepare` reads: STR LMDBs and image folders with a ``labels.tsv``.

A source yields `RawSample`s in a fixed order (the resume of `prepare_shards` relies on it) and
counts the records it skips by reason in `skipped`. Everything wrong with the *listing itself* —
a labels file that is not UTF-8, a malformed line, a path that leaves the folder — is refused up
front with an `InputError` naming the file and line: those are the user's own text files, fixed
in a minute, and skipping such lines would quietly drop whatever a wrong encoding or a wrong
path convention touches (often every line). A record that is merely unreadable (a missing image,
a corrupt LMDB record) is skipped and counted, as large downloaded sets always hold a few.
A file listed twice with the same label is one sample (the repeat is skipped and counted as
``duplicate_row``); listed twice with different labels, the listing contradicts itself and is
refused with a line naming both rows.

`iter_raw` is the evaluator's view of both kinds: every listed record in order, numbered from 1
(for a folder, the number its sample gets in `clipocr lmdb`'s LMDB), with ``None`` for an image
that cannot be read, so a test set's missing image is scored wrong rather than dropped.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import SKIP_MISSING_IMAGE, LmdbReader, is_lmdb_dir

log = logging.getLogger(__name__)

LABELS_NAME = "labels.tsv"
SKIP_DUPLICATE_ROW = "duplicate_row"


@dataclass
class RawSample:
    """One record of a source, before label preparation."""

    source: str
    index: int
    image: bytes
    label: str


def _leaves_folder(rel: str) -> bool:
    """Whether a listed path points outside its folder: absolute, or through ``..``.

    Checked on the text, not on the resolved path, so an image folder that is itself a symlink
    to a shared disk (common for datasets) keeps working."""
    path = PurePosixPath(rel)
    return path.is_absolute() or ".." in path.parts


def _decode_labels(path: Path) -> str:
    """The labels file as text; a BOM (Windows editors) is dropped, other non-UTF-8 refused."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputError(
            f"{path}:{lineno}: not UTF-8 (byte {raw[err.start]:#04x} at column {column}); "
            "save the file as UTF-8"
        ) from None


class ImageFolderSource:
    """A folder with images and a ``labels.tsv`` of ``relpath<TAB>label`` lines."""

    def __init__(self, root: str | Path, labels_name: str = LABELS_NAME) -> None:
        self.root = Path(root)
        self.labels_path = self.root / labels_name
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such folder")
        if not self.labels_path.is_file():
            raise InputError(f"{self.root}: no {labels_name} (expected relpath<TAB>label lines)")
        self.entries: list[tuple[int, str, str]] = []
        self.skipped: Counter[str] = Counter()
        seen: dict[str, tuple[int, str]] = {}  # normalised path → (line, label) first listed
        # newline=None splits lines exactly as a text-mode open() does (\n, \r\n, \r).
        lines = io.StringIO(_decode_labels(self.labels_path), newline=None)
        for lineno, line in enumerate(lines, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            parts = line.split("\t", 1)
            if len(parts) != 2 or not parts[0]:
                raise InputError(
                    f"{self.labels_path}:{lineno}: malformed line {line[:60]!r} "
                    "(expected relpath<TAB>label)"
                )
            if _leaves_folder(parts[0]):
                raise InputError(
                    f"{self.labels_path}:{lineno}: path {parts[0][:60]!r} leaves the folder "
                    f"(list paths relative to {self.root}, without '..')"
                )
            key = PurePosixPath(parts[0]).as_posix()  # "./a.png" and "a.png" are one file
            first = seen.setdefault(key, (lineno, parts[1]))
            if first[0] != lineno:
                if first[1] != parts[1]:
                    raise InputError(
                        f"{self.labels_path}:{lineno}: {parts[0][:60]!r} is labelled "
                        f"{parts[1][:40]!r} here but {first[1][:40]!r} on line {first[0]}; "
                        "keep one of the two rows"
                    )
                self.skipped[SKIP_DUPLICATE_ROW] += 1
                continue
            self.entries.append((lineno, parts[0], parts[1]))
        if not self.entries:
            raise InputError(f"{self.labels_path}: no samples listed")
        if self.skipped:
            dupes = self.skipped[SKIP_DUPLICATE_ROW]
            log.warning("%s: %d duplicate row(s) skipped", self.labels_path, dupes)

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
                self.skipped[SKIP_MISSING_IMAGE] += 1
                log.warning("%s:%d: %s skipped (%s)", self.labels_path, lineno, rel, err)
                continue
            yield RawSample(self.name, lineno, data, label)

    def iter_raw(self, skip_bad: bool = True) -> Iterator[tuple[int, bytes | None, str]]:
        """``(number from 1, image bytes, label)`` per listed sample; an unreadable image is
        skipped and counted, or with ``skip_bad=False`` yielded as ``None`` (see module doc)."""
        for number, (lineno, rel, label) in enumerate(self.entries, 1):
            try:
                data: bytes | None = (self.root / rel).read_bytes()
            except OSError as err:
                log.warning("%s:%d: %s unreadable (%s)", self.labels_path, lineno, rel, err)
                if skip_bad:
                    self.skipped[SKIP_MISSING_IMAGE] += 1
                    continue
                data = None
            yield number, data, label

    def close(self) -> None:
        """Nothing held open (`LmdbSource` holds its environment)."""


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

    def iter_raw(self, skip_bad: bool = True) -> Iterator[tuple[int, bytes | None, str | None]]:
        """`LmdbReader.iter_raw`: records by their LMDB index (``None`` parts kept on request)."""
        return self.reader.iter_raw(skip_bad)

    def close(self) -> None:
        self.reader.close()


Source = LmdbSource | ImageFolderSource


def open_source(path: str | Path) -> Source:
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
