"""Run a student over benchmark LMDBs, and time it (DESIGN §7).

`evaluate` is the one evaluation routine: `clipocr-eval` and the trainer's validation both call it,
so the two can never disagree on the protocol. Images are decoded as PARSeq's test loader decodes
them (full PIL decode, RGB, bicubic 32×128: `load_uint8` without `draft`), labels and predictions
are kept raw in the `Report` (`results`), and the protocol scores them there.

Undecodable or missing images are *scored as wrong* (empty prediction, confidence 0) and listed:
skipping them, as a training reader does, would inflate accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from tqdm import tqdm

from clipocr.evaluate.datasets import Dataset, dataset_from_path, open_test_set
from clipocr.evaluate.results import PROTOCOL_CHARSET, Report, Sample, Speed
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.preprocess import IMG_H, IMG_W, load_uint8, normalize


def _iter_batches(
    dataset: Dataset, batch_size: int, limit: int | None, unlabelled: dict[str, int]
) -> Iterator[tuple[list[tuple[int, str, str]], torch.Tensor]]:
    """Yield ``([(index, raw label, error)], uint8 images)``; a bad image becomes a blank one."""
    reader = open_test_set(dataset)
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


DECODINGS = ("ar", "ctc")


def protocol_charset(model_charset: Charset) -> str:
    """The charset a student is scored under by default: PARSeq's 36-symbol protocol for the
    ASCII sets; a custom alphabet's own (the protocol would fold ``ä`` in labels to ``a`` but
    drop it from predictions, scoring every such word wrong)."""
    return model_charset.name if model_charset.is_custom else PROTOCOL_CHARSET


def evaluate(
    model: torch.nn.Module,
    lmdb_paths: Sequence[str | Path | Dataset],
    batch_size: int = 256,
    device: str | torch.device | None = None,
    charsets: Sequence[str] | None = None,
    limit: int | None = None,
    progress: bool = False,
    decoding: str = "ar",
) -> Report:
    """Read every image of every LMDB with `model` (a `Student`: `.read`, `.charset`) and keep
    what PARSeq's protocol needs to score it.

    `decoding` = ``"ar"`` scores the autoregressive decoder (`read`, the protocol); ``"ctc"``
    scores the auxiliary CTC head on the encoder tokens (`read_ctc`), which shows whether the
    encoder reads when the decoder does not.
    `device` defaults to the model's own (the trainer's validation passes its model as it is);
    the model's train/eval mode is restored afterwards. `limit` caps the samples read per LMDB.
    `charsets` are the test charsets to score under, the protocol first (default: the
    `protocol_charset` of the model alone). `lmdb_paths` may also be labelled image folders.
    """
    if decoding not in DECODINGS:
        raise InputError(f"unknown decoding {decoding!r}; choose one of {DECODINGS}")
    if decoding == "ctc" and getattr(model, "ctc_head", None) is None:
        raise InputError("--decoding ctc: this student has no CTC head (trained with ctc_weight 0)")
    read = model.read_ctc if decoding == "ctc" else model.read
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
                    for (index, label, error), (text, conf) in zip(meta, read(x), strict=True):
                        if error:
                            text, conf = "", 0.0
                        samples.append(Sample(d.name, index, label, text, float(conf), error))
    finally:
        model.train(was_training)
    return Report(
        datasets=datasets,
        samples=samples,
        charsets=tuple(charsets or (protocol_charset(model.charset),)),
        max_len=model.charset.max_len,
        unlabelled=unlabelled,
        device=str(dev),
        batch_size=batch_size,
        limit=limit,
    )


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
        reader = open_test_set(d)
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
        where = ", ".join(str(d.path) for d in datasets)
        raise InputError(f"{where}: no decodable image to time the readers on (empty LMDB?)")
    return out


def first_images(datasets: Sequence[Dataset], count: int) -> torch.Tensor:
    """Realistic uint8 input for `measure_speed` (greedy decoding stops at EOS, so random input
    would time a different number of steps)."""
    return torch.stack(first_decoded(datasets, count, load_uint8))
