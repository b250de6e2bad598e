"""The record of a K-view store's augmentation, and the trainer's check that it replays here.

A view's pixels (`views.view_pixels`) depend on code and on libraries: the op list and its
magnitudes, timm's `RandAugment` draws, Pillow's arithmetic, numpy's generators. A store records
all of it in its manifest so that a trainer on another machine can tell, before its first step,
whether it would make the very pixels the teacher saw:

* `AugSpec` — the op list with each op's probability and the arguments it can draw, magnitude,
  ops per image, the seed function, the pixel path, and the versions of Pillow, timm and numpy;
  `replay_drift` names what differs here.
* the probe — a fixed batch of word-like images (`probe_images`) and view 1 of each as this
  machine makes it (`probe_views`); 32 images draw every op of the variant (tested).
  `probe_diff` counts the pixels that differ from a recorded probe.
* `ViewsRecord` — the manifest's ``views`` entry: K, the store seed, the `AugSpec` and the probe's
  pixels as the cache job made them; `check_replay` compares it with this machine and
  `replay_or_refuse` is the trainer's gate (one-line refusal, or a logged count with
  ``--allow-view-drift``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import platform
import random
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import PIL
import timm

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import IMG_H, IMG_W
from clipocr.pipeline.views import PIXELS, SEED_FUNCTION, augmenter, view_pixels

log = logging.getLogger(__name__)

SPEC_NAME = "parseq-randaugment"
SPEC_VERSION = 1
# The libraries whose arithmetic or random draws make a view's pixels: a store cached under other
# versions may not replay bit for bit (`replay_drift`). Python is recorded, not checked: `random`
# keeps its seeded sequences stable across versions.
CHECKED_LIBRARIES = ("Pillow", "timm", "numpy")
PROBE_COUNT = 32  # probe images: enough that every op of the variant is drawn (tested)
PROBE_STORE_SEED = 0


# -- the record ---------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """JSON's view of `value` (tuples → lists, numpy scalars → numbers), for exact comparison."""
    return json.loads(json.dumps(value, default=lambda v: v.item()))


def _op_record(op: Any) -> dict[str, Any]:
    """One op as the spec records it: its name, probability, the arguments it can draw at this
    magnitude (timm's level function run under several seeds: a signed op shows both signs)
    and fixed keyword arguments (fill, the interpolations it picks from)."""
    state = random.getstate()
    try:
        if hasattr(op, "level_fn"):  # timm's AugmentOp
            args = set()
            for seed in range(16):
                random.seed(seed)
                args.add(tuple(op.level_fn(op.magnitude, op.hparams)) if op.level_fn else ())
            return {"name": op.name, "prob": op.prob, "args": sorted(args),
                    "magnitude_std": op.magnitude_std, "kwargs": op.kwargs}  # fmt: skip
        args = [(op.arg,), (-op.arg,)] if op.signed else [(op.arg,)]
        return {"name": op.name, "prob": op.prob, "args": sorted(args), "fn": op.fn.__name__}
    finally:
        random.setstate(state)


def library_versions() -> dict[str, str]:
    return {
        "Pillow": PIL.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class AugSpec:
    """What a store's view pixels were made with (the manifest's ``views.augment``)."""

    magnitude: int
    num_ops: int
    ops: list[dict[str, Any]]
    versions: dict[str, str]
    seed_function: str = SEED_FUNCTION
    pixels: str = PIXELS
    name: str = SPEC_NAME
    version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the probe's digest

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> AugSpec:
        try:
            return cls(**data)
        except TypeError as err:
            raise InputError(
                f"{where}: unreadable augmentation spec of the views ({err})"
            ) from None


def current_spec(magnitude: int = 5, num_ops: int = 3) -> AugSpec:
    """The spec of this code and these libraries at `magnitude` / `num_ops`."""
    ops = [_op_record(op) for op in augmenter(magnitude, num_ops)._augment.ops]
    return AugSpec(magnitude, num_ops, _plain(ops), library_versions())


def replay_drift(spec: AugSpec) -> list[str]:
    """Why `spec`'s views would not replay bit for bit here: one short reason per difference
    (an op, the seed function, a library version); empty when everything recorded matches."""
    here = current_spec(spec.magnitude, spec.num_ops)
    reasons = []
    for name in ("name", "version", "seed_function", "pixels"):
        if getattr(spec, name) != getattr(here, name):
            reasons.append(f"{name} {getattr(spec, name)!r} (here {getattr(here, name)!r})")
    stored = {op["name"]: op for op in _plain(spec.ops)}
    mine = {op["name"]: op for op in here.ops}
    if list(stored) != list(mine):
        reasons.append(f"ops {list(stored)} (here {list(mine)})")
    reasons += [
        f"op {name} {stored[name]} (here {mine[name]})"
        for name in stored
        if name in mine and stored[name] != mine[name]
    ]
    for lib in CHECKED_LIBRARIES:
        if spec.versions.get(lib) != here.versions[lib]:
            reasons.append(f"{lib} {spec.versions.get(lib)} (here {here.versions[lib]})")
    return reasons


# -- the probe ----------------------------------------------------------------------------------
def probe_images() -> np.ndarray:
    """A fixed batch of word-like uint8 images ``(PROBE_COUNT, 3, 32, 128)``: coloured ground,
    a gradient, dark strokes and a frame. Drawn with numpy's legacy `RandomState`, whose stream
    numpy keeps fixed across versions, with integer arithmetic only."""
    rng = np.random.RandomState(19)
    out = np.empty((PROBE_COUNT, 3, IMG_H, IMG_W), np.uint8)
    xs = np.arange(IMG_W, dtype=np.int64)
    for i in range(PROBE_COUNT):
        ground = rng.randint(0, 256, 3)
        ink = 255 - ground
        img = ground[:, None, None] + (xs * rng.randint(-40, 41) // IMG_W)[None, None, :]
        img = np.broadcast_to(img, (3, IMG_H, IMG_W)).copy()
        for _ in range(rng.randint(4, 9)):  # strokes: glyph-sized bars
            x, y = rng.randint(4, IMG_W - 12), rng.randint(4, IMG_H - 12)
            w, h = rng.randint(2, 10), rng.randint(2, 20)
            img[:, y : y + h, x : x + w] = ink[:, None, None]
        img[:, :, :2] = rng.randint(0, 256, 3)[:, None, None]  # an edge the geometric ops move
        out[i] = np.clip(img, 0, 255)
    return out


def probe_views(magnitude: int = 5, num_ops: int = 3) -> np.ndarray:
    """View 1 of every probe image, as this machine makes it (one store seed, probe keys)."""
    return np.stack([
        view_pixels(img, f"probe/{i}", 1, PROBE_STORE_SEED, magnitude=magnitude, num_ops=num_ops)
        for i, img in enumerate(probe_images())
    ])  # fmt: skip


def pixels_digest(pixels: np.ndarray) -> str:
    """sha256 of a uint8 array's shape and bytes (the manifest's short record of a probe)."""
    h = hashlib.sha256(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def probe_diff(recorded: np.ndarray, here: np.ndarray | None = None) -> int:
    """How many probe pixels (image, row, column: any channel) differ between the views a store
    recorded and `here` (default: this machine's `probe_views`); every pixel when the shapes
    disagree."""
    if here is None:
        here = probe_views()
    if recorded.shape != here.shape:
        return int(np.prod(here.shape)) // here.shape[1]
    return int((recorded != here).any(axis=1).sum())


# -- the manifest's record of a K-view store -----------------------------------------------------
def _pack(pixels: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(pixels).tobytes(), 9)).decode()


def _unpack(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8).reshape(shape)


@dataclass(frozen=True)
class ViewsRecord:
    """The manifest's ``views`` entry: K, the store seed, the spec the pixels were made with and
    the probe's view pixels as the cache job's machine made them (zlib + base64, ≈ 80 KB), so
    a trainer elsewhere can count the pixels that would differ (`check_replay`)."""

    count: int
    store_seed: int
    augment: AugSpec
    probe: dict[str, Any]  # {"shape", "sha256", "pixels"}

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "store_seed": self.store_seed,
                "augment": self.augment.to_dict(), "probe": _plain(self.probe)}  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """What two writers of one store must agree on (the probe follows from it)."""
        out = self.to_dict()
        del out["probe"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> ViewsRecord:
        try:
            probe = dict(data["probe"])
            probe["shape"] = tuple(probe["shape"])
            aug = AugSpec.from_dict(data["augment"], where)
            return cls(int(data["count"]), int(data["store_seed"]), aug, probe)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{where}: unreadable views record ({err!r})") from None

    def probe_pixels(self) -> np.ndarray:
        return _unpack(self.probe["pixels"], tuple(self.probe["shape"]))


def views_record(
    count: int, store_seed: int = 0, magnitude: int = 5, num_ops: int = 3
) -> ViewsRecord:
    """The record a cache job writes for `count` views made here."""
    if count < 2:
        raise ValueError(f"views {count}: a views record is for 2 or more views")
    probe = probe_views(magnitude, num_ops)
    return ViewsRecord(count, store_seed, current_spec(magnitude, num_ops),
                       {"shape": probe.shape, "sha256": pixels_digest(probe),
                        "pixels": _pack(probe)})  # fmt: skip


@dataclass(frozen=True)
class Replay:
    """Whether a store's views replay here: `reasons` they may not (`replay_drift`, and the
    probe), and how many of the probe's `probe_total` pixels came out differently."""

    reasons: list[str]
    probe_differing: int
    probe_total: int

    @property
    def exact(self) -> bool:
        return not self.reasons


def check_replay(record: ViewsRecord) -> Replay:
    """Compare a store's views record with this machine: the recorded spec and versions, and
    the probe's pixels made here against those the cache job recorded."""
    reasons = replay_drift(record.augment)
    here = probe_views(record.augment.magnitude, record.augment.num_ops)
    differing = probe_diff(record.probe_pixels(), here)
    total = here.shape[0] * here.shape[2] * here.shape[3]
    if differing:
        reasons.append(f"probe: {differing} of {total} pixels differ")
    return Replay(reasons, differing, total)


def replay_or_refuse(record: ViewsRecord, where: str, allow_drift: bool = False) -> Replay:
    """The trainer's gate for a K-view store: returns the `Replay` when the views replay
    exactly here, or when `allow_drift` (then logged with the probe's differing pixels);
    otherwise an InputError in one line naming what differs."""
    replay = check_replay(record)
    if replay.exact:
        return replay
    what = "; ".join(replay.reasons[:3]) + (" …" if len(replay.reasons) > 3 else "")
    if not allow_drift:
        raise InputError(
            f"{where}: its {record.count} cached views would not replay bit for bit here ({what}),"
            " so the student's pixels would not be those the teacher saw: re-cache on this "
            "setup, or train with --allow-view-drift"
        )
    log.warning(
        "%s: cached views do not replay exactly here (%s); training anyway (--allow-view-drift): "
        "%d of %d probe pixels differ",
        where, what, replay.probe_differing, replay.probe_total,
    )  # fmt: skip
    return replay
