"""What one decode job makes of a batch: the decoded images and, for a K-view store, their views.

A K-view store (DESIGN §5) feeds the teacher K images per sample: view 0 is the decoded 32×128
uint8 image, views 1…K−1 its training augmentation (`pipeline.views.view_pixels`, the function
the trainer replays). Augmenting costs ≈ 0.5 CPU-ms per image and view, several times the
decode, so it runs where the decode runs — in the decode pool's worker processes, straight into
the job's shared-memory slot — and the runner thread only feeds the teacher. `decode_job` is the
one code path for "decode + views": the pool's workers and its in-process mode (``workers=0``)
both call it, so both make the same pixels, bit for bit.

A slot is uint8 ``(K, batch, 3, 32, 128)``: ``slot[0]`` the decoded images, ``slot[v]`` view v.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipocr.pipeline.preprocess import decode_uint8
from clipocr.pipeline.views import view_pixels

Decoder = Callable[[bytes, np.ndarray], None]  # encoded bytes → writes (3, 32, 128) uint8


def decode_training(data: bytes, out: np.ndarray) -> None:
    """The cache's decode: the training-speed ``draft`` path, the pixels the student reads."""
    decode_uint8(data, draft=True, out=out)


@dataclass(frozen=True)
class ViewSpec:
    """What the views of a store depend on (besides each sample's key): the pool makes them from
    it, and a pool keyed on another spec is never reused for this store (`shared_pool`)."""

    count: int  # K ≥ 2: view 0 (the decoded image) and K − 1 augmented views
    store_seed: int
    magnitude: int = 5
    num_ops: int = 3

    def __post_init__(self) -> None:
        if self.count < 2:
            raise ValueError(f"ViewSpec count {self.count}: a spec is for K ≥ 2 views")

    @classmethod
    def from_record(cls, views: Mapping[str, Any]) -> ViewSpec | None:
        """The spec of a store's manifest ``views`` record (`StoreSpec.views`); None for a
        one-view store (an empty record)."""
        if not views or int(views.get("count", 1)) < 2:
            return None
        aug = views["augment"]
        return cls(int(views["count"]), int(views["store_seed"]), int(aug["magnitude"]),
                   int(aug["num_ops"]))  # fmt: skip


def slot_views(views: ViewSpec | None) -> int:
    """Images per sample in a slot: K for a K-view spec, else 1."""
    return views.count if views is not None else 1


def decode_job(
    decode: Decoder,
    views: ViewSpec | None,
    datas: list[bytes],
    keys: list[str],
    slot: np.ndarray,
) -> list[tuple[int, str]]:
    """Decode `datas` into ``slot[0]`` and make views 1…K−1 of each decoded sample into
    ``slot[v]``; the (index, reason) of each sample that did not decode (it gets no views)."""
    bad = []
    for i, data in enumerate(datas):
        try:
            decode(data, slot[0, i])
        except Exception as err:  # a corrupt or unreadable image: recorded missing
            bad.append((i, f"{type(err).__name__}: {err}"))
    if views is None:
        return bad
    failed = {i for i, _ in bad}
    seed, magnitude, num_ops = views.store_seed, views.magnitude, views.num_ops
    for i, key in enumerate(keys):
        if i in failed:
            continue
        for v in range(1, views.count):
            slot[v, i] = view_pixels(slot[0, i], key, v, seed, magnitude=magnitude,
                                     num_ops=num_ops)  # fmt: skip
    return bad
