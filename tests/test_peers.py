"""bench/peers.py: peers are scored on exactly the evaluator's samples, and EasyOCR / Tesseract
really read rendered words when the optional `peers` extra (and the tesseract binary) is there."""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import lmdb
import pytest
import torch
from conftest import text_image, write_lmdb
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from clipocr.evaluate import evaluate
from clipocr.evaluate.datasets import Dataset, dataset_from_path
from clipocr.evaluate.results import Speed
from clipocr.pipeline.charset import Charset

_spec = importlib.util.spec_from_file_location(
    "bench_peers", Path(__file__).parents[1] / "bench" / "peers.py"
)
peers = importlib.util.module_from_spec(_spec)
sys.modules["bench_peers"] = peers
_spec.loader.exec_module(peers)

EASYOCR_MISSING = peers.easyocr_unavailable()
TESSERACT_MISSING = peers.tesseract_unavailable()


class ConstantPeer:
    """Reads every image as `text`; records the batch sizes and image sizes it was given."""

    name = "constant"
    description = "reads everything as one word"

    def __init__(self, text: str) -> None:
        self.text = text
        self.batches: list[int] = []
        self.sizes: set[tuple[int, int]] = set()

    def read(self, image: Image.Image) -> tuple[str, float]:
        return self.read_batch([image])[0]

    def read_batch(self, images: Sequence[Image.Image]) -> list[tuple[str, float]]:
        self.batches.append(len(images))
        self.sizes |= {img.size for img in images}
        return [(self.text, 0.8)] * len(images)


class ConstantStudent(nn.Module):
    """The same constant reader in the student's interface, for `evaluate`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.charset = Charset.from_name("94")
        self.text = text

    def read(self, images: torch.Tensor) -> list[tuple[str, float]]:
        return [(self.text, 0.8)] * images.shape[0]


@pytest.fixture
def awkward_lmdb(tmp_path: Path) -> Path:
    """A CUTE80-named set with a corrupt image, a label the protocol drops and an unlabelled
    record: every way the peers' sample set could drift from the evaluator's."""
    img = text_image("abc", size=(90, 30))
    path = write_lmdb(
        tmp_path / "CUTE80",
        [(img, "ABC"), (b"not an image", "abc"), (img, "a.b.c"), (img, "xyz"), (img, "!!"),
         (img, "abc"), (img, "abd")],
    )  # fmt: skip
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.delete(b"label-000000006")
    env.close()
    return path


def test_peer_is_scored_on_exactly_the_evaluators_samples(awkward_lmdb: Path) -> None:
    dataset = dataset_from_path(awkward_lmdb)
    peer = ConstantPeer("Abc")
    report = peers.evaluate_peer(peer, [dataset], limit=6, chunk=2)
    student = evaluate(ConstantStudent("Abc"), [dataset], batch_size=2, limit=6)
    assert [(s.key, s.label, s.error != "") for s in report.samples] == [
        (s.key, s.label, s.error != "") for s in student.samples
    ]
    (row,) = report.rows
    (srow,) = student.rows
    assert (row.samples, row.tally.correct, row.unreadable, row.dropped) == (4, 2, 1, 1)
    assert (srow.samples, srow.tally.correct, srow.unreadable, srow.dropped) == (4, 2, 1, 1)
    assert report.unlabelled == student.unlabelled == {"CUTE80": 1}
    assert peer.batches == [1, 2, 1]  # the corrupt image never reaches the peer; limit 6 holds
    assert peer.sizes == {(90, 30)}  # the peer sees the crop as stored, not resized to 32x128


def test_peer_gets_a_large_jpeg_crop_as_stored(tmp_path: Path) -> None:
    """Full decode at the stored size: no reduced-scale JPEG `draft`, no resize."""
    big = text_image("large crop", fmt="JPEG", size=(1600, 400))
    dataset = dataset_from_path(write_lmdb(tmp_path / "words", [(big, "large")]))
    peer = ConstantPeer("large")
    peers.evaluate_peer(peer, [dataset])
    assert peer.sizes == {(1600, 400)}
    (timed,) = peers.first_pil_images([dataset], 1)
    stored = Image.open(io.BytesIO(big)).convert("RGB")
    assert timed.size == stored.size and timed.tobytes() == stored.tobytes()


def test_side_by_side_puts_readers_in_columns(awkward_lmdb: Path, tmp_path: Path) -> None:
    other = write_lmdb(tmp_path / "words", [(text_image("xyz"), "xyz")])
    datasets = [dataset_from_path(awkward_lmdb), Dataset("words", other, "other")]
    reports = {
        "abc": peers.evaluate_peer(ConstantPeer("abc"), datasets),
        "xyz": peers.evaluate_peer(ConstantPeer("xyz"), datasets),
    }
    speeds = {"abc": Speed("cpu", 12.5, 80.0, 4, 1)}
    lines = peers.side_by_side(reports, speeds).splitlines()
    assert lines[1].split() == ["dataset", "samples", "abc", "xyz"]
    by_name = {line.split()[0]: line.split() for line in lines[2:]}
    # CUTE80 scores 5 (ABC, corrupt abc, a.b.c, xyz, abd): "abc" gets 2 right and NEDs
    # 0, 1, 0, 1, 1/3; "xyz" gets 1 right and NEDs 1, 1, 1, 0, 1.
    assert by_name["CUTE80"][1:] == ["5", "40.00", "/", "53.33", "20.00", "/", "20.00"]
    assert by_name["words"][1:4] == ["1", "0.00", "/"] and by_name["words"][5] == "100.00"
    assert by_name["all"][2:] == ["6", "33.33", "/", "44.44", "33.33", "/", "33.33"]
    assert "Combined" in lines[-4]  # CUTE80 is a common benchmark: its group gets a row
    assert lines[-2].split()[-2:] == ["12.5", "-"] and lines[-1].split()[-2:] == ["80.0", "-"]


def test_parse_tsv_joins_words_and_multiplies_confidences() -> None:
    head = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight"
    tsv = "\n".join(
        [
            head + "\tconf\ttext",
            "1\t1\t0\t0\t0\t0\t0\t0\t90\t30\t-1\t",
            "5\t1\t1\t1\t1\t1\t2\t2\t40\t20\t90.0\tGenaxis",
            "5\t1\t1\t1\t1\t2\t50\t2\t40\t20\t50.0\tTheatre",
            "5\t3\t1\t1\t1\t1\t2\t2\t40\t20\t80.0\tword",
            "5\t4\t1\t1\t1\t1\t2\t2\t40\t20\t-1\t ",
        ]
    )
    pages = peers.parse_tsv(tsv)
    assert set(pages) == {1, 3}  # page 2 read nothing; page 4's only "word" is blank
    assert pages[1][0] == "Genaxis Theatre" and pages[1][1] == pytest.approx(0.45)
    assert pages[3] == ("word", pytest.approx(0.8))


WORDS = ["hello", "Street", "42", "OPEN", "coffee", "Library", "exit", "zebra"]


@pytest.fixture(scope="module")
def rendered_words(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Dark words on white, tightly cropped like a detector's box, at 28 px (Pillow's bundled
    TrueType face: fast, and no font file needed)."""
    font = ImageFont.load_default(size=28)
    samples = []
    for word in WORDS:
        left, top, right, bottom = font.getbbox(word)
        img = Image.new("RGB", (right - left + 16, bottom - top + 12), "white")
        ImageDraw.Draw(img).text((8 - left, 6 - top), word, fill="black", font=font)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        samples.append((buf.getvalue(), word))
    return dataset_from_path(write_lmdb(tmp_path_factory.mktemp("peers") / "words", samples))


@pytest.mark.skipif(EASYOCR_MISSING is not None, reason=str(EASYOCR_MISSING))
def test_easyocr_reads_rendered_words_offline(rendered_words: Dataset) -> None:
    torch.set_num_threads(1)
    peer = peers.make_peer("easyocr")
    report = peers.evaluate_peer(peer, [rendered_words])
    (row,) = report.rows
    assert row.samples == 8 and row.tally.correct >= 7 and row.one_minus_ned > 90.0
    assert all(0.0 <= s.confidence <= 1.0 for s in report.samples)
    images = peers.first_pil_images([rendered_words], 2)
    speed = peers.measure_peer_speed(peer, images, 2, 1, warmup=1, repeats_b1=2)
    assert speed.ms_per_image > 0 and speed.images_per_s > 0 and speed.batch_size == 2


@pytest.mark.skipif(TESSERACT_MISSING is not None, reason=str(TESSERACT_MISSING))
def test_tesseract_batch_reads_as_one_process_per_image(rendered_words: Dataset) -> None:
    peer = peers.make_peer("tesseract")
    images = peers.first_pil_images([rendered_words], 3)
    batched = peer.read_batch(images)
    assert batched == [peer.read(img) for img in images]  # the list file changes nothing
    report = peers.evaluate_peer(peer, [rendered_words])
    assert report.rows[0].tally.correct >= 7
