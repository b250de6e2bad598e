"""Find benchmark LMDBs, run a student over them, and measure its speed (DESIGN §7).

`evaluate` is the one evaluation routine: `clipocr-eval` and the trainer's validation both call it,
so the two can never disagree on the protocol. It keeps every sample's raw label and raw prediction
in the `Report` and derives every figure (table rows, "Combined" rows, JSON, predictions TSV) from
those, so the outputs agree by construction.

Undecodable or missing images are *scored as wrong* (empty prediction, confidence 0) and listed:
skipping them, as a training reader does, would inflate accuracy.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from tqdm import tqdm

from clipocr.evaluate.metrics import Score, Tally, score
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import LmdbReader, is_lmdb_dir
from clipocr.pipeline.preprocess import IMG_H, IMG_W, load_uint8, normalize

PROTOCOL_CHARSET = "36"

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


def dataset_from_path(path: str | Path, display: str | None = None) -> Dataset:
    """Name one LMDB folder; a bare IC13/IC15 is opened to tell its version from its size."""
    path = Path(path)
    name = canonical_name(path.name)
    if name is None and _BARE_IC.fullmatch(_squash(path.name)):
        reader = LmdbReader(path)
        name = canonical_name(path.name, len(reader))
        reader.close()
    if name is None:
        return Dataset(display or path.name, path, GROUP_OTHER)
    return Dataset(name, path, group_of(name))


def _walk_lmdbs(root: Path) -> Iterator[Path]:
    """LMDB folders under `root` in sorted order; hidden folders (temporary writes) are skipped.

    Symlinked folders are followed (benchmark sets are often linked in from a shared disk), each
    real folder once, so a link loop cannot recurse forever."""
    seen: set[str] = set()
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        if is_lmdb_dir(here):
            dirnames.clear()
            yield here
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))


def discover_lmdbs(root: str | Path, names: Sequence[str] | None = None) -> list[Dataset]:
    """Every LMDB under `root` (recursively), named by its folder, in the literature's order.

    `names` keeps only the datasets whose name, folder name or path relative to `root` matches one
    of them (case-insensitively, tolerant like the folder matching: ``iiit5k_3000`` → IIIT5k).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such data folder")
    paths = list(_walk_lmdbs(root))
    if not paths:
        raise InputError(f"{root}: no LMDB (a folder with data.mdb) found under it")
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
                f"{root}: two LMDBs are both {d.name} ({rel[seen[d.name].path]}, {rel[d.path]}); "
                f"point --data at a narrower folder or pick one with --datasets"
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


# --------------------------------------------------------------------------------------------
# evaluation


@dataclass(frozen=True)
class Sample:
    """One LMDB record as read: raw label, raw prediction (model charset), and any read error."""

    dataset: str
    index: int
    label: str
    text: str
    confidence: float
    error: str = ""

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.index}"


@dataclass(frozen=True)
class Row:
    """One dataset (or a Combined group) under one test charset."""

    name: str
    tally: Tally
    unreadable: int = 0
    dropped: int = 0
    members: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """False for a Combined row some of whose datasets were not evaluated."""
        return not self.missing

    @property
    def samples(self) -> int:
        return self.tally.samples

    @property
    def accuracy(self) -> float:
        return self.tally.accuracy

    @property
    def one_minus_ned(self) -> float:
        return self.tally.one_minus_ned

    @property
    def confidence(self) -> float:
        return self.tally.confidence


@dataclass
class Report:
    """Everything one evaluation produced; figures are derived from `samples` on demand."""

    datasets: list[Dataset]
    samples: list[Sample]
    charsets: tuple[str, ...] = (PROTOCOL_CHARSET,)
    max_len: int = 25
    unlabelled: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"
    batch_size: int = 1
    limit: int | None = None
    _scored: dict[str, list[tuple[Sample, Score]]] = field(default_factory=dict, repr=False)

    def scored(self, charset: str | None = None) -> list[tuple[Sample, Score]]:
        """Samples kept by the protocol of `charset` (default: the 36-symbol one), with scores."""
        name = charset or self.charsets[0]
        if name not in self._scored:
            cs = Charset.from_name(name, self.max_len)
            pairs = ((s, score(s.text, s.label, cs)) for s in self.samples)
            self._scored[name] = [(s, sc) for s, sc in pairs if sc is not None]
        return self._scored[name]

    @property
    def rows(self) -> list[Row]:
        """Per-dataset rows under the 36-symbol protocol, in `datasets` order."""
        return self.rows_for(None)

    def rows_for(self, charset: str | None) -> list[Row]:
        """Per-dataset rows under `charset` (None: the 36-symbol protocol)."""
        tallies = {d.name: Tally() for d in self.datasets}
        unreadable = dict.fromkeys(tallies, 0)
        for s, sc in self.scored(charset):
            tallies[s.dataset].add(sc, s.confidence)
            unreadable[s.dataset] += bool(s.error)
        totals: dict[str, int] = dict.fromkeys(tallies, 0)
        for s in self.samples:
            totals[s.dataset] += 1
        return [
            Row(
                d.name,
                tallies[d.name],
                unreadable=unreadable[d.name],
                dropped=totals[d.name] - tallies[d.name].samples,
            )
            for d in self.datasets
        ]

    def combined(self, which: str, charset: str | None = None) -> Row | None:
        """The sample-weighted "Combined" row of `which` ("sub" or "full"), None if no member."""
        members = COMBINED[which]
        rows = [r for r in self.rows_for(charset) if r.name in members]
        if not rows:
            return None
        return Row(
            f"Combined ({which})",
            Tally.combine(r.tally for r in rows),
            unreadable=sum(r.unreadable for r in rows),
            dropped=sum(r.dropped for r in rows),
            members=tuple(r.name for r in rows),
            missing=tuple(m for m in members if m not in {r.name for r in rows}),
        )

    def overall(self, charset: str | None = None) -> Tally:
        """All evaluated samples pooled: what the trainer's validation reports."""
        return Tally.combine(r.tally for r in self.rows_for(charset))

    @property
    def errors(self) -> list[Sample]:
        return [s for s in self.samples if s.error]


def _iter_batches(
    dataset: Dataset, batch_size: int, limit: int | None, unlabelled: dict[str, int]
) -> Iterator[tuple[list[tuple[int, str, str]], torch.Tensor]]:
    """Yield ``([(index, raw label, error)], uint8 images)``; a bad image becomes a blank one."""
    reader = LmdbReader(dataset.path)
    blank = torch.zeros(3, IMG_H, IMG_W, dtype=torch.uint8)
    meta: list[tuple[int, str, str]] = []
    images: list[torch.Tensor] = []
    try:
        records = reader.iter_raw(skip_bad=False)
        for count, (index, data, label) in enumerate(records):
            if limit is not None and count >= limit:
                break
            if label is None:  # nothing to score against; counted and reported, not guessed
                unlabelled[dataset.name] = unlabelled.get(dataset.name, 0) + 1
                continue
            error = ""
            if data is None:
                error, image = "missing_image", blank
            else:
                try:
                    image = load_uint8(data)
                except Exception as err:  # PIL raises many types on corrupt data
                    error, image = f"corrupt_image ({type(err).__name__})", blank
            meta.append((index, label, error))
            images.append(image)
            if len(meta) == batch_size:
                yield meta, torch.stack(images)
                meta, images = [], []
        if meta:
            yield meta, torch.stack(images)
    finally:
        reader.close()


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate(
    model: torch.nn.Module,
    lmdb_paths: Sequence[str | Path | Dataset],
    batch_size: int = 256,
    device: str | torch.device | None = None,
    charsets: Sequence[str] = (PROTOCOL_CHARSET,),
    limit: int | None = None,
    progress: bool = False,
) -> Report:
    """Read every image of every LMDB with `model` (a `Student`: `.read`, `.charset`) and keep
    what PARSeq's protocol needs to score it.

    `device` defaults to the model's own (the trainer's validation passes its model as it is);
    the model's train/eval mode is restored afterwards. `limit` caps the samples read per LMDB.
    `charsets` are the test charsets to score under, the 36-symbol protocol first.
    """
    datasets = [p if isinstance(p, Dataset) else dataset_from_path(p) for p in lmdb_paths]
    names = [d.name for d in datasets]
    if len(set(names)) < len(names):
        raise InputError(f"two LMDBs share a name in {[str(d.path) for d in datasets]}")
    if device is not None:
        model.to(device)
    dev = _model_device(model)
    was_training = model.training
    model.eval()
    samples: list[Sample] = []
    unlabelled: dict[str, int] = {}
    try:
        with torch.inference_mode():
            for d in tqdm(datasets, desc="evaluate", unit="set", disable=not progress):
                for meta, images in _iter_batches(d, batch_size, limit, unlabelled):
                    x = normalize(images.to(dev, non_blocking=True))
                    for (index, label, error), (text, conf) in zip(
                        meta, model.read(x), strict=True
                    ):
                        if error:
                            text, conf = "", 0.0
                        samples.append(Sample(d.name, index, label, text, float(conf), error))
    finally:
        model.train(was_training)
    return Report(
        datasets=datasets,
        samples=samples,
        charsets=tuple(charsets),
        max_len=model.charset.max_len,
        unlabelled=unlabelled,
        device=str(dev),
        batch_size=batch_size,
        limit=limit,
    )


# --------------------------------------------------------------------------------------------
# speed


@dataclass(frozen=True)
class Speed:
    """Inference speed after warm-up: latency at batch 1 and throughput at `batch_size`."""

    device: str
    ms_per_image: float
    images_per_s: float
    batch_size: int
    threads: int


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_speed(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int,
    warmup: int = 3,
    repeats_b1: int = 20,
    repeats_batch: int = 2,
) -> Speed:
    """Time `model.read` (greedy decoding included) on uint8 `images` already on the model's device.

    Batch 1 runs over the first `repeats_b1` images (cycled); the batch run repeats one batch of
    `batch_size` images (cycled when fewer are given). Warm-up runs first so lazy initialisation,
    allocator growth and cuDNN autotuning are not counted.
    """
    dev = _model_device(model)
    was_training = model.training
    model.eval()
    n = images.shape[0]
    x = normalize(images.to(dev))
    batch = x[torch.arange(batch_size, device=dev) % n]
    try:
        with torch.inference_mode():
            for i in range(warmup):
                model.read(x[i % n : i % n + 1])
            _sync(dev)
            start = time.perf_counter()
            for i in range(repeats_b1):
                model.read(x[i % n : i % n + 1])
            _sync(dev)
            ms = 1000.0 * (time.perf_counter() - start) / repeats_b1
            model.read(batch)
            _sync(dev)
            start = time.perf_counter()
            for _ in range(repeats_batch):
                model.read(batch)
            _sync(dev)
            ips = repeats_batch * batch_size / (time.perf_counter() - start)
    finally:
        model.train(was_training)
    return Speed(str(dev), ms, ips, batch_size, torch.get_num_threads())


T = TypeVar("T")


def first_decoded(datasets: Sequence[Dataset], count: int, decode: Callable[[bytes], T]) -> list[T]:
    """Up to `count` images from the first datasets that `decode` can read, in order.

    Unreadable ones are skipped here: `evaluate` reports them; timing should not include them.
    """
    out: list[T] = []
    for d in datasets:
        reader = LmdbReader(d.path)
        try:
            for _, data, _ in reader.iter_raw():
                try:
                    out.append(decode(data))
                except Exception:
                    continue
                if len(out) == count:
                    return out
        finally:
            reader.close()
    if not out:
        raise InputError("no decodable image to time the readers on")
    return out


def first_images(datasets: Sequence[Dataset], count: int) -> torch.Tensor:
    """Realistic uint8 input for `measure_speed` (greedy decoding stops at EOS, so random input
    would time a different number of steps)."""
    return torch.stack(first_decoded(datasets, count, load_uint8))
