"""Benchmark LMDBs: the literature's names and groups, and finding them under a folder (DESIGN §7).

Test sets reach users under many folder names (``IIIT5k_3000``, ``icdar2013_857``, a bare ``IC13``
told apart only by its size), so a folder is matched to its canonical name tolerantly, and every
figure downstream is keyed by that name: the "Combined" groups and the expected sizes are defined
here, once.

A user's own test set may also be a labelled image folder (``labels.tsv``, as ``prepare
--folder`` reads): `discover_datasets` finds those beside the LMDBs, and `open_test_set` reads
either kind the same way (`clipocr.pipeline.sources`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import is_lmdb_dir
from clipocr.pipeline.sources import LABELS_NAME, Source, open_source

# The six common benchmarks, in the literature's column order, with their standard sizes.
COMMON = ("IIIT5k", "SVT", "IC13_857", "IC13_1015", "IC15_1811", "IC15_2077", "SVTP", "CUTE80")
HARD = ("ArT", "COCOv1.4", "Uber", "WordArt", "OST", "HOST", "WOST", "TotalText", "CTW1500")
EXPECTED_SAMPLES = {
    "IIIT5k": 3000,
    "SVT": 647,
    "IC13_857": 857,
    "IC13_1015": 1015,
    "IC15_1811": 1811,
    "IC15_2077": 2077,
    "SVTP": 645,
    "CUTE80": 288,
}
# The two "Combined" groups: the 7,248-sample subset (CLIP-OCR's 93.8, PARSeq's headline) and the
# 7,672-sample set with the larger IC13/IC15 versions.
COMBINED = {
    "sub": ("IIIT5k", "SVT", "IC13_857", "IC15_1811", "SVTP", "CUTE80"),
    "full": ("IIIT5k", "SVT", "IC13_1015", "IC15_2077", "SVTP", "CUTE80"),
}
GROUP_COMMON, GROUP_HARD, GROUP_OTHER = "benchmark", "hard", "other"

# Patterns on the "squashed" folder name (lower case, no '_', '-', '.', ' '), so that
# IIIT5k_3000, iiit5k, IC13_857, icdar2013_857, ic15_1811, SVTP_645, CUTE80_288 … all resolve.
_PATTERNS: tuple[tuple[str, str], ...] = (
    ("IIIT5k", r"iiit5k(3000)?"),
    ("SVT", r"svt(647)?"),
    ("SVTP", r"svtp(645)?|svtperspective(645)?"),
    ("CUTE80", r"cute(80)?(288)?"),
    ("IC13_857", r"ic(dar)?(20)?13857"),
    ("IC13_1015", r"ic(dar)?(20)?131015"),
    ("IC15_1811", r"ic(dar)?(20)?151811"),
    ("IC15_2077", r"ic(dar)?(20)?152077"),
    ("ArT", r"art\d*"),
    ("COCOv1.4", r"coco(text)?(v?14)?\d*"),
    ("Uber", r"uber(text)?\d*"),
    ("WordArt", r"wordart\d*"),
    ("OST", r"ost\d*"),
    ("HOST", r"host\d*"),
    ("WOST", r"wost\d*"),
    ("TotalText", r"totaltext\d*"),
    ("CTW1500", r"(scut)?ctw(1500)?"),
)
# A bare IC13/IC15 folder is named by its size, the only thing that tells the versions apart.
_BY_SIZE = {
    "ic13": {857: "IC13_857", 1015: "IC13_1015"},
    "ic15": {1811: "IC15_1811", 2077: "IC15_2077"},
}
_BARE_IC = re.compile(r"ic(dar)?(20)?(1[35])")


def _squash(name: str) -> str:
    return re.sub(r"[\s_.\-]+", "", name.lower())


def canonical_name(folder: str, num_samples: int | None = None) -> str | None:
    """The literature's name for a benchmark folder, or None when it is not a known set."""
    key = _squash(folder)
    for name, pattern in _PATTERNS:
        if re.fullmatch(pattern, key):
            return name
    bare = _BARE_IC.fullmatch(key)
    if bare and num_samples is not None:
        return _BY_SIZE[f"ic{bare.group(3)}"].get(num_samples)
    return None


def group_of(name: str) -> str:
    if name in COMMON:
        return GROUP_COMMON
    return GROUP_HARD if name in HARD else GROUP_OTHER


@dataclass(frozen=True)
class Dataset:
    """One test LMDB: `name` is the literature's name when known, else the folder name."""

    name: str
    path: Path
    group: str

    @property
    def sort_key(self) -> tuple[int, int, str]:
        order = {GROUP_COMMON: 0, GROUP_HARD: 1, GROUP_OTHER: 2}[self.group]
        known = COMMON if self.group == GROUP_COMMON else HARD
        return order, known.index(self.name) if self.name in known else 0, self.name.lower()


def is_test_set(path: Path) -> bool:
    """An LMDB folder, or an image folder with a ``labels.tsv``."""
    return is_lmdb_dir(path) or (path / LABELS_NAME).is_file()


def open_test_set(dataset: Dataset | str | Path) -> Source:
    """A reader of one test set, LMDB or labelled folder: ``iter_raw``, ``len``, ``close``."""
    return open_source(dataset.path if isinstance(dataset, Dataset) else dataset)


def dataset_from_path(path: str | Path, display: str | None = None) -> Dataset:
    """Name one test set folder; a bare IC13/IC15 is opened to tell its version from its size."""
    path = Path(path)
    name = canonical_name(path.name)
    if name is None and _BARE_IC.fullmatch(_squash(path.name)):
        source = open_test_set(path)
        name = canonical_name(path.name, len(source))
        source.close()
    if name is None:
        return Dataset(display or path.name, path, GROUP_OTHER)
    return Dataset(name, path, group_of(name))


def _walk(root: Path, folders: bool) -> Iterator[Path]:
    """LMDB folders (and with `folders`, labelled image folders) under `root` in sorted order;
    hidden folders (temporary writes) are skipped.

    Symlinked folders are followed (benchmark sets are often linked in from a shared disk), each
    real folder once, so a link loop cannot recurse forever."""
    found = is_test_set if folders else is_lmdb_dir
    seen: set[str] = set()
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        if found(here):
            dirnames.clear()
            yield here
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))


def discover_lmdbs(root: str | Path, names: Sequence[str] | None = None) -> list[Dataset]:
    """Every LMDB under `root` (recursively), named by its folder, in the literature's order.

    `names` keeps only the datasets whose name, folder name or path relative to `root` matches one
    of them (case-insensitively, tolerant like the folder matching: ``iiit5k_3000`` → IIIT5k).
    """
    return discover_datasets(root, names, folders=False)


def discover_datasets(
    root: str | Path, names: Sequence[str] | None = None, folders: bool = True
) -> list[Dataset]:
    """`discover_lmdbs`, with labelled image folders (``labels.tsv``) found too (`folders`)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such data folder")
    paths = list(_walk(root, folders))
    if not paths:
        also = f" or image folder with {LABELS_NAME}" if folders else ""
        raise InputError(f"{root}: no LMDB (a folder with data.mdb){also} found under it")
    rel = {p: p.relative_to(root).as_posix() if p != root else p.name for p in paths}
    folders = [p.name for p in paths]
    # An unknown folder is named by its folder name, or by its relative path when that is shared.
    datasets = [
        dataset_from_path(p, display=rel[p] if folders.count(p.name) > 1 else p.name) for p in paths
    ]
    if names:
        datasets = _select(datasets, names, rel)
    seen: dict[str, Dataset] = {}
    for d in datasets:
        if d.name in seen:
            raise InputError(
                f"{root}: two test sets are both {d.name} ({rel[seen[d.name].path]}, "
                f"{rel[d.path]}); point --data at a narrower folder or pick one with --datasets"
            )
        seen[d.name] = d
    return sorted(datasets, key=lambda d: d.sort_key)


def _select(datasets: list[Dataset], names: Sequence[str], rel: dict[Path, str]) -> list[Dataset]:
    def aliases(d: Dataset) -> set[str]:
        return {_squash(d.name), _squash(d.path.name), _squash(rel[d.path])}

    wanted = {_squash(canonical_name(n) or n): n for n in names}
    kept = [d for d in datasets if aliases(d) & wanted.keys()]
    found = set().union(*(aliases(d) for d in kept)) if kept else set()
    missing = [n for key, n in wanted.items() if key not in found]
    if missing:
        available = ", ".join(sorted(rel[d.path] for d in datasets))
        raise InputError(f"--datasets {', '.join(missing)}: not found; available: {available}")
    return kept
