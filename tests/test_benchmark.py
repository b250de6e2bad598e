"""The evaluation loop (PARSeq's test protocol end to end) and the speed timing."""

import io
from pathlib import Path

import lmdb
import pytest
import torch
from conftest import text_image, write_lmdb
from PIL import Image
from torch import nn
from torchvision import transforms as T

from clipocr.evaluate import evaluate
from clipocr.evaluate.benchmark import measure_speed
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError

IMG = text_image("abc")


class ConstantReader(nn.Module):
    """Reads every image as `text` with confidence 0.8; records the batches it saw."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.charset = Charset.from_name("94")
        self.text = text
        self.batches: list[int] = []
        self.inputs: list[torch.Tensor] = []

    def read(self, images: torch.Tensor) -> list[tuple[str, float]]:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 128)
        assert -1.0 <= float(images.min()) and float(images.max()) <= 1.0
        self.batches.append(images.shape[0])
        self.inputs.append(images.clone())
        return [(self.text, 0.8)] * images.shape[0]


def test_evaluate_scores_bad_images_as_wrong_and_restores_mode(tmp_path: Path) -> None:
    path = write_lmdb(
        tmp_path / "CUTE80",
        [(IMG, "ABC"), (b"not an image", "abc"), (IMG, "a.b.c"), (IMG, "xyz"), (IMG, "!!"),
         (IMG, "abc")],
    )  # fmt: skip
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.delete(b"label-000000006")
    env.close()
    model = ConstantReader("Abc").train()
    report = evaluate(model, [path], batch_size=2, charsets=("36", "94"))
    assert model.training and model.batches == [2, 2, 1]
    (row,) = report.rows
    assert row.name == "CUTE80" and row.samples == 4 and row.dropped == 1  # "!!" dropped
    assert row.tally.correct == 2  # ABC and a.b.c; the corrupt "abc" counts as wrong
    assert row.unreadable == 1 and [s.key for s in report.errors] == ["CUTE80/2"]
    assert report.errors[0].error.startswith("corrupt_image")
    assert report.unlabelled == {"CUTE80": 1}
    assert row.confidence == pytest.approx(100 * (0.8 * 3 + 0.0) / 4)
    (row94,) = report.rows_for("94")
    assert row94.samples == 5 and row94.tally.correct == 0  # "Abc" ≠ "ABC" once case counts


def test_evaluate_feeds_the_model_exactly_what_parseqs_test_loader_does(tmp_path: Path) -> None:
    """A large JPEG crop: full PIL decode, RGB, torchvision's bicubic Resize, 0.5/0.5 (PARSeq's
    `SceneTextDataModule.get_transform`), bit for bit, with no reduced-scale `draft` decode."""
    big = text_image("large crop", fmt="JPEG", size=(1600, 400))
    model = ConstantReader("large")
    evaluate(model, [write_lmdb(tmp_path / "IIIT5k", [(big, "large")])])
    parseq = T.Compose(
        [T.Resize((32, 128), T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(0.5, 0.5)]
    )
    expected = parseq(Image.open(io.BytesIO(big)).convert("RGB"))
    assert torch.equal(model.inputs[0][0], expected)


def test_measure_speed_reports_positive_figures() -> None:
    model = ConstantReader("a")
    speed = measure_speed(model, torch.zeros(3, 3, 32, 128, dtype=torch.uint8), batch_size=5)
    assert speed.ms_per_image > 0 and speed.images_per_s > 0 and speed.batch_size == 5
    assert model.batches[-1] == 5 and 1 in model.batches


class TwoReaders(ConstantReader):
    """`read` says "abc" (the AR decoder), `read_ctc` says "xyz" (the CTC head)."""

    ctc_head = nn.Identity()

    def read_ctc(self, images: torch.Tensor) -> list[tuple[str, float]]:
        return [("xyz", 0.5)] * images.shape[0]


def test_evaluate_scores_the_ctc_head_on_request(tmp_path: Path) -> None:
    path = write_lmdb(tmp_path / "IIIT5k", [(IMG, w) for w in ["abc", "xyz", "abc"]])
    model = TwoReaders("abc")
    assert evaluate(model, [path]).rows[0].tally.correct == 2
    assert evaluate(model, [path], decoding="ctc").rows[0].tally.correct == 1
    with pytest.raises(InputError, match="no CTC head"):
        evaluate(ConstantReader("abc"), [path], decoding="ctc")
    with pytest.raises(InputError, match="unknown decoding"):
        evaluate(model, [path], decoding="beam")
