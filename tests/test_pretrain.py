"""`teacher-pretrain` on a handful of rendered words: it learns, saves and loads as a teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from clipocr.cache_teacher.pretrain import PretrainConfig, Pretrainer, PretrainResult, pretrain
from clipocr.cache_teacher.teacher import TeacherConfig, load_teacher
from clipocr.commands.app import app
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.synth.dataset import render_lmdb

TINY = {"width": 32, "layers": 4, "embed_dim": 24}


@pytest.fixture(scope="module")
def words(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("words")
    cs = Charset.from_name("36")
    render_lmdb(root / "train", num=64, seed=5, charset=cs, progress=False)
    render_lmdb(root / "val", num=24, seed=6, charset=cs, progress=False)
    return root / "train", root / "val"


def test_pretrain_learns_and_saves_a_loadable_teacher(words, tmp_path):
    out = tmp_path / "teacher"
    cfg = PretrainConfig(
        data=[words[0]], out=out, val=words[1], steps=30, batch_size=16, lr=2e-3, warmup=3,
        seed=0, log_every=1, progress=False, command="test run", **TINY,
    )  # fmt: skip
    summary = pretrain(cfg)
    assert isinstance(summary, PretrainResult)
    history = json.loads((out / "history.json").read_text())
    losses = [h["loss"] for h in history if h["kind"] == "train"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:3]) / 3
    assert summary.status == "finished" and summary.steps == 30

    state = load_file(str(out / "teacher.safetensors"))
    assert all(v.dtype == torch.float16 for v in state.values())
    assert not any("ctc" in k for k in state)  # the auxiliary head is not part of the teacher
    teacher = load_teacher(
        TeacherConfig(model=str(out / "teacher.json"), pretrained=str(out / "teacher.safetensors"))
    )
    assert teacher.dims == {"image_tokens": 33, "image": 32, "text": 32, "emb": 24}
    assert teacher.fingerprint()["tokenizer"]["type"] == "char"
    images = torch.randint(0, 256, (2, 3, 32, 128), dtype=torch.uint8)
    feats = teacher.features(images, ["word", "x" * 25])
    assert feats["image_s1"].shape == (2, 33, 32) and feats["text_s3"].shape == (2, 26, 32)

    report = (out / "TEACHER.md").read_text()
    assert "test run" in report and "finished" in report
    assert set(summary.loaded) == {f"top1@{summary.val_words}"}
    assert json.loads((out / "pretrain_args.json").read_text())["seed"] == 0
    # The written settings are a config file that repeats the run.
    again = PretrainConfig.from_sources(out / "pretrain_args.json", {"command": "test run"})
    assert again == cfg


def test_a_step_budget_is_reproducible_and_checkpoints_leave_a_teacher(words, tmp_path):
    def run(out: Path, steps: int) -> Pretrainer:
        cfg = PretrainConfig(data=[words[0]], out=out, steps=steps, batch_size=16, seed=1,
                             log_every=2, progress=False, **TINY)  # fmt: skip
        trainer = Pretrainer(cfg)
        for _ in range(steps):
            trainer.step(trainer.step_count / steps)
        trainer.checkpoint("running")
        return trainer

    one, two = run(tmp_path / "one", 4), run(tmp_path / "two", 4)
    assert one.window == two.window and len(one.history) == 2  # no --val: no eval entries
    assert one.result.status == "running" and one.result.steps == 4 and one.result.loaded is None
    a = load_file(str(tmp_path / "one" / "teacher.safetensors"))
    b = load_file(str(tmp_path / "two" / "teacher.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "one" / "pretrain_args.json").read_text())["command"]


def test_cli_builds_the_config_from_its_flags(words, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "teacher-pretrain", "--data", str(words[0]), "--out", str(out), "--steps", "2",
        "--batch-size", "8", "--seed", "3",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["status"] == "finished" and summary["steps"] == 2 and summary["samples"] == 16
    args = json.loads((out / "pretrain_args.json").read_text())
    assert args["lr"] == 1e-3 and args["seed"] == 3 and args["data"] == [str(words[0])]
    assert args["command"] == (
        f"clipocr teacher-pretrain --data {words[0]} --out {out} --steps 2 --batch-size 8 --seed 3"
    )
    assert (out / "teacher.safetensors").is_file() and (out / "TEACHER.md").is_file()
