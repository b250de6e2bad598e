"""Cached teacher *views* (DESIGN §5, issue 19): the augmented images both jobs must agree on.

The official code runs CLIP online on the student's augmented image; a cache of clean-image
features pulls an augmented student toward an image it did not see. A K-view store caches the
teacher on K images per sample instead: view 0 is the clean image, views 1…K−1 are the training
augmentation (`augment.StudentAugment`) of it. The trainer later replays the view it draws and
gets the very pixels the teacher saw. What both sides must agree on lives on the pipeline floor
(the cache job may not import `train_student`): the pixels here, their record in `view_record`.

* `view_seed` — THE seed function: ``blake2b(f"{store_seed}\\x1f{key}\\x1f{view}", 8 bytes,
  person=b"clipocr.view")`` read big-endian, shifted to 63 bits. A hash, not Python's `hash()`
  (salted per process) nor arithmetic on the key, so it is the same in every process, machine
  and Python version, and neighbouring keys/views get unrelated seeds.
* `view_pixels` — the view's pixels from the decoded 32×128 uint8 image (the cache's
  `decode_uint8(draft=True)`, which is also the student's clean input): view 0 is that image,
  untouched; another view is augmented under its seed at 32×128 and, when an op changed the
  canvas (the expanding rotation), resized back with the pipeline's one bicubic resize. So a view
  is augmented *after* the resize, where the trainer without views augments the decoded crop
  before it (the same for a crop already near 32×128, as MJSynth's are; the device path also
  augments after the resize).
* `train_view` — which view a sample shows in an epoch: ``(epoch + h(run_seed, shard)) mod K``,
  so K consecutive epochs visit all K views of every sample; drawn per shard, so the trainer
  reads one view's targets of a shard per epoch (see there).

`view_record` holds the rest: `AugSpec` (what the pixels depend on, library versions included),
the probe batch, the manifest's `ViewsRecord` and the trainer's replay check.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image

from clipocr.pipeline.augment import StudentAugment
from clipocr.pipeline.preprocess import IMG_H, IMG_W, resize

SEED_FUNCTION = (
    "clipocr.view_seed/1: int.from_bytes(blake2b(f'{store_seed}\\x1f{key}\\x1f{view}'.encode(), "
    "digest_size=8, person=b'clipocr.view').digest(), 'big') >> 1"
)
VIEW_RULE = "clipocr.train_view/1: (epoch + blake2b(f'{run_seed}\\x1f{shard}') mod K) mod K"
PIXELS = (
    "decode_uint8(draft=True) → RGB uint8 32×128 → view 0: as is; view v: "
    "StudentAugment(img, view_seed) → bicubic resize to 32×128 if the canvas changed"
)


def view_seed(store_seed: int, sample_key: str, view: int) -> int:
    """The augmentation seed of `view` of sample `sample_key` in a store seeded `store_seed`: a
    63-bit integer, the same in every process and on every machine (see `SEED_FUNCTION`)."""
    if view < 0:
        raise ValueError(f"view {view}: must be 0 or more")
    text = f"{store_seed}\x1f{sample_key}\x1f{view}".encode()
    digest = hashlib.blake2b(text, digest_size=8, person=b"clipocr.view").digest()
    return int.from_bytes(digest, "big") >> 1


def train_view(run_seed: int, epoch: int, shard: str, views: int) -> int:
    """The view the samples of `shard` show in `epoch` of a run seeded `run_seed` (see
    `VIEW_RULE`): every view once per `views` consecutive epochs.

    Drawn per shard, not per sample: the trainer then reads one view's arrays of a shard group
    per epoch (a store chunk holds many samples, so per-sample views would read and decode all
    K views' chunks: K× the image-target I/O). Each shard starts at its own offset and a worker
    interleaves several shards (`StreamConfig.open_shards`), so a batch still mixes views."""
    if views < 1:
        raise ValueError(f"views {views}: must be at least 1")
    text = f"{run_seed}\x1f{shard}".encode()
    digest = hashlib.blake2b(text, digest_size=8, person=b"clipocr.vrule").digest()
    return (epoch + int.from_bytes(digest, "big") % views) % views


def augmenter(magnitude: int = 5, num_ops: int = 3) -> StudentAugment:
    """One `StudentAugment` per process and setting (building timm's ops costs milliseconds)."""
    return _augmenter(int(magnitude), int(num_ops))  # one cache key however it is called


@lru_cache(maxsize=4)
def _augmenter(magnitude: int, num_ops: int) -> StudentAugment:
    return StudentAugment(magnitude, num_ops)


def view_pixels(
    image: np.ndarray,
    sample_key: str,
    view: int,
    store_seed: int,
    *,
    magnitude: int = 5,
    num_ops: int = 3,
) -> np.ndarray:
    """View `view` of a decoded uint8 image ``(3, 32, 128)``, as uint8 ``(3, 32, 128)``.

    View 0 is `image` itself (not a copy). Another view is the training augmentation under
    `view_seed(store_seed, sample_key, view)`, resized back to 32×128 when the expanding
    rotation grew the canvas. A pure function of its arguments and the library versions."""
    if image.shape != (3, IMG_H, IMG_W) or image.dtype != np.uint8:
        raise ValueError(f"view_pixels wants uint8 (3, {IMG_H}, {IMG_W}), got {image.dtype} "
                         f"{image.shape}")  # fmt: skip
    if view == 0:
        return image
    img = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    out = resize(augmenter(magnitude, num_ops)(img, view_seed(store_seed, sample_key, view)))
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).copy()


def view_batch(
    images: np.ndarray,
    keys: list[str],
    view: int,
    store_seed: int,
    *,
    magnitude: int = 5,
    num_ops: int = 3,
) -> np.ndarray:
    """`view_pixels` of a batch ``(B, 3, 32, 128)`` whose samples are `keys` (a new array)."""
    if len(images) != len(keys):
        raise ValueError(f"{len(keys)} keys for {len(images)} images")
    out = np.empty_like(images)
    for i, key in enumerate(keys):
        out[i] = view_pixels(images[i], key, view, store_seed, magnitude=magnitude,
                             num_ops=num_ops)  # fmt: skip
    return out
