"""What a store holds and for which teacher: the layout constants, `StoreSpec`, the manifest.

``manifest.json`` is written once, when the store is created: ``format``, the `StoreSpec` fields
and a ``storage`` note. The fields of the spec except ``source`` are the store's identity — a
writer that brings a different identity is refused, and the trainer checks the fields it cares
about (`TeacherStore.check_compatible`). ``source`` records where the teacher came from (paths
as given) for people to read; it is never compared, so two paths to one teacher's files, or a
copy of them, make the same store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import clipocr
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.teacher_store.codecs import parse_codec
from clipocr.pipeline.teacher_store.location import Location

STORE_FORMAT = "clipocr-teacher-store/2"
# Format 1 (before the text table) had only the ragged per-shard text layout; it reads as
# ``text_layout="ragged"``. Writers only add to stores of the current format.
FORMAT_1 = "clipocr-teacher-store/1"
# Format 3: cached *views* (DESIGN §5, issue 19) — format 2 plus the manifest's ``views`` record
# and, per view v ≥ 1, image taps ``<tap>_v<v>`` beside view 0's ``<tap>``. A 1-view store is
# written as format 2, byte for byte today's; formats 1 and 2 read as one view.
FORMAT_VIEWS = "clipocr-teacher-store/3"
READABLE_FORMATS = (FORMAT_1, STORE_FORMAT, FORMAT_VIEWS)
MANIFEST_NAME = "manifest.json"
STAGES_IMAGE = ("image_s1", "image_s2", "image_s3")
STAGES_TEXT = ("text_s1", "text_s2", "text_s3")
TEXT_EMB = "text_emb"
ALL_TAPS = STAGES_IMAGE + STAGES_TEXT + (TEXT_EMB,)
FORMS = ("normalised", "raw")
# Where text features live: "table" = once per distinct label in the store's text table, samples
# hold a reference; "ragged" = L+1 rows per sample in its shard group (format 1's only layout).
TEXT_LAYOUTS = ("table", "ragged")
# Decoder positions past EOS: "masked" (this project's default) or "align" (pulled towards CLIP's
# pad-token features, as the official code does; needs the table, which keeps every position).
TEXT_PADS = ("masked", "align")
# The text table's folder at the store root (no shard group can be named so: `check_group_name`).
TABLE_DIR = "__text_table"
DEFAULT_CHUNK_SAMPLES = 256
# Text rows per chunk = chunk_samples × this (mean L+1 is about 7 for MJ/ST words).
TEXT_ROWS_PER_SAMPLE = 8
# keys / text_offsets are small; one chunk holds a whole shard.
INDEX_CHUNK = 65536


def view_tap(tap: str, view: int) -> str:
    """The array holding `tap` for cached view `view`: view 0 (the clean image) under the tap's
    own name, as in a 1-view store, view v under ``<tap>_v<v>``."""
    return tap if view == 0 else f"{tap}_v{view}"


def jsonable(value: Any) -> Any:
    """Tuples → lists etc., so a spec compares equal to what came back from manifest.json."""
    return json.loads(json.dumps(value))


def diff_fields(have: Any, want: Any, prefix: str = "") -> list[str]:
    """Dotted paths where `have` differs from `want`, for the keys `want` names."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [f"{prefix or 'manifest'}: store {have!r} != {want!r}"]
        out: list[str] = []
        for key, value in want.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in have:
                out.append(f"{path}: absent from store, expected {value!r}")
            else:
                out += diff_fields(have[key], value, path)
        return out
    return [] if have == want else [f"{prefix}: store {have!r} != {want!r}"]


def _required_dims(taps: Iterable[str]) -> set[str]:
    need: set[str] = set()
    for tap in taps:
        if tap in STAGES_IMAGE:
            need |= {"image_tokens", "image"}
        elif tap in STAGES_TEXT:
            need.add("text")
        elif tap == TEXT_EMB:
            need.add("emb")
    return need


@dataclass
class StoreSpec:
    """Everything that decides what the cached targets are: two different specs never share a store.

    `teacher` identifies the teacher by content (e.g. ``checksum`` of the weights, its
    architecture and activation; the caching job fills it, see `cache_teacher.teacher.store_spec`);
    `preprocessing` whatever the teacher's input pipeline depends on (image size, mean/std,
    pos-embed mode …); `dims` the feature sizes ``image_tokens``, ``image``, ``text``, ``emb``;
    `source` where the teacher came from — recorded, never compared (see the module docstring).
    `text_layout` and `text_pad`: see `TEXT_LAYOUTS`, `TEXT_PADS`. ``ragged`` is the default of
    the bare API, which needs no text table written first; ``cache-teacher`` defaults to
    ``table``.
    """

    teacher: dict
    preprocessing: dict
    dims: dict
    form: str = "normalised"
    codec: str = "zstd"
    charset: str = "36"
    code_version: str = clipocr.__version__
    taps: tuple[str, ...] = field(default=ALL_TAPS)
    source: dict = field(default_factory=dict)
    text_layout: str = "ragged"
    text_pad: str = "masked"
    # Cached views (format 3): {} for one view, else `clipocr.pipeline.views.ViewsRecord`'s
    # dict — ``count`` (K ≥ 2), ``store_seed``, ``augment`` (the spec), ``probe``. Kept a plain
    # dict here: the store format must not import the augmentation (timm, torch).
    views: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.taps = tuple(self.taps)
        if self.views and not (
            isinstance(self.views.get("count"), int)
            and self.views["count"] >= 2
            and "store_seed" in self.views
        ):
            raise InputError(f"store views {self.views.get('count')!r}: a views record needs "
                             "count >= 2 and a store_seed")  # fmt: skip
        if self.form not in FORMS:
            raise InputError(f"store form {self.form!r}: expected one of {', '.join(FORMS)}")
        parse_codec(self.codec)
        if self.text_layout not in TEXT_LAYOUTS or self.text_pad not in TEXT_PADS:
            raise InputError(
                f"store text layout {self.text_layout!r} / pad {self.text_pad!r}: expected one "
                f"of {', '.join(TEXT_LAYOUTS)} / {', '.join(TEXT_PADS)}"
            )
        if self.text_pad == "align" and self.text_layout != "table":
            raise InputError(
                "--text-pad align needs the text table (--text-layout table): the ragged layout "
                "keeps only the rows up to EOT"
            )
        unknown = [t for t in self.taps if t not in ALL_TAPS]
        if unknown or not self.taps:
            raise InputError(f"store taps {list(self.taps)}: each must be one of {ALL_TAPS}")
        absent = sorted(_required_dims(self.taps) - set(self.dims))
        if absent:
            raise InputError(f"store dims {self.dims}: missing {', '.join(absent)}")

    @property
    def view_count(self) -> int:
        """K: cached views per sample (1 for stores of formats 1 and 2)."""
        return int(self.views.get("count", 1))

    @property
    def store_format(self) -> str:
        return FORMAT_VIEWS if self.views else STORE_FORMAT

    def image_arrays(self, tap: str) -> list[str]:
        """The arrays of image tap `tap`, one per view (`view_tap`)."""
        return [view_tap(tap, v) for v in range(self.view_count)]

    def to_dict(self) -> dict:
        out = jsonable(asdict(self))
        if not self.views:
            del out["views"]  # a 1-view manifest is format 2's, unchanged
        return out

    def identity(self) -> dict:
        """`to_dict` without ``source`` (and the views' probe pixels, which follow from the
        rest): the fields a store and a writer must agree on."""
        out = self.to_dict()
        del out["source"]
        if "views" in out:
            out["views"].pop("probe", None)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> StoreSpec:
        """From `to_dict` output or a whole manifest (extra keys are ignored)."""
        names = (
            "teacher", "preprocessing", "dims", "form", "codec", "charset", "code_version",
            "source", "text_layout", "text_pad", "views",
        )  # fmt: skip
        kwargs = {k: d[k] for k in names if k in d}
        if "taps" in d:
            kwargs["taps"] = tuple(d["taps"])
        return cls(**kwargs)


def shard_group_name(shard: str | Path) -> str:
    """A source shard's group name, its file stem: ``.../shard-000000.tar`` → ``shard-000000``."""
    name = Path(str(shard)).name
    return name[: -len(".tar")] if name.endswith(".tar") else Path(name).stem


def check_group_name(name: str) -> None:
    if (
        not name
        or "/" in name
        or name.startswith((".", "__"))  # "__": reserved for TABLE_DIR
        or name in (MANIFEST_NAME, "zarr.json")
    ):
        raise ValueError(f"{name!r} is not a valid shard group name")


def read_manifest(loc: Location) -> dict:
    """The manifest at `loc`, or an InputError saying why `loc` is not a teacher store."""
    text = loc.read_text(MANIFEST_NAME)
    where = loc.child(MANIFEST_NAME)
    if text is None:
        raise InputError(f"{where}: missing; {loc} is not a teacher store (run cache-teacher)")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err})") from None
    if manifest.get("format") not in READABLE_FORMATS:
        raise InputError(
            f"{where}: format {manifest.get('format')!r}, expected one of "
            f"{', '.join(map(repr, READABLE_FORMATS))} (a store from a newer clipocr?)"
        )
    return manifest
