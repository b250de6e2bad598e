"""The exportable graph decodes exactly as `Student.generate`, for every decoder layer kind."""

from __future__ import annotations

import pytest
import torch

from clipocr.pipeline.preprocess import normalize
from clipocr.train_student.export_graph import GreedyGraph
from clipocr.train_student.model import Student, student_config


def images(batch: int = 6) -> torch.Tensor:
    """Plain grey images from black to white: a random student's output depends on little but
    overall brightness, so these give its rows different fates."""
    return (
        torch.linspace(0, 255, batch)
        .round()
        .to(torch.uint8)[:, None, None, None]
        .expand(batch, 3, 32, 128)
    )


def _ends(ids: torch.Tensor) -> list[int]:
    return [int((row == 0).nonzero()[0]) if bool((row == 0).any()) else -1 for row in ids]


def ending_student(seed: int = 0, max_len: int = 8, **overrides: object) -> Student:
    """A tiny random student whose words end at different steps (one never): the EOS logit is
    raised until the rows' fates differ, so the graph's EOS mask is exercised."""
    torch.manual_seed(seed)
    student = Student(student_config("test", max_len=max_len, **overrides)).eval()
    with torch.no_grad():
        student.head.weight.mul_(20.0)  # confident steps whose argmax varies
        student.head.weight[student.charset.eos_id].zero_()
        student.head.bias.zero_()
        for bias in torch.arange(2.0, 6.0, 0.125).tolist():
            student.head.bias[student.charset.eos_id] = bias
            ends = _ends(student.generate(normalize(images()))[0])
            if len(set(ends)) > 2 or (len(set(ends)) == 2 and -1 not in ends):
                return student
    raise AssertionError(f"no EOS bias gives rows different ends for {overrides}")


@pytest.mark.parametrize(
    "overrides",
    [
        {"dec_layer": "standard"},
        {"dec_layer": "two_stream"},
        {"dec_layer": "official"},
        {"dec_layer": "standard", "ctc_weight": 1.0, "ctc_align": True, "stem": "conv"},
    ],
    ids=["standard", "two_stream", "official", "demo-like"],
)
def test_the_graph_decodes_as_generate(overrides: dict) -> None:
    student = ending_student(**overrides)
    x = images()
    with torch.inference_mode():
        ids, probs = GreedyGraph(student)(x)
    want_ids, want_probs = student.generate(normalize(x))
    steps = want_ids.shape[1]
    assert ids.shape == probs.shape == (6, student.cfg.max_len + 1)
    assert torch.equal(ids[:, :steps], want_ids)
    torch.testing.assert_close(probs[:, :steps], want_probs, rtol=0, atol=1e-6)
    # past generate's last step every row has ended: EOS with probability 1
    assert bool((ids[:, steps:] == 0).all()) and bool((probs[:, steps:] == 1).all())


def test_the_batch_dimension_stays_free_in_a_trace() -> None:
    student = ending_student()
    graph = GreedyGraph(student)
    with torch.inference_mode():
        traced = torch.jit.trace(graph, (images(2),), check_trace=False)
        for batch in (1, 5):
            x = images(batch)
            got, want = traced(x), graph(x)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
