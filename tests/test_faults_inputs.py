"""Bad inputs a demanding user tries (issue 15), as fast tests: each ends in one line naming the
file and what is wrong, never a traceback, and leaves nothing half-written under a final name.

The slow, end-to-end versions (real processes, real full disks) are cases of bench/faults.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import WORDS, make_shards, run_console, text_image, write_lmdb

from clipocr.commands.app import main
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import LmdbWriter
from clipocr.pipeline.shards import load_index, shard_paths


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"), WORDS, shard_size=8)


def _index_copy(shards: Path, tmp_path: Path, edit: dict) -> Path:
    out = tmp_path / "edited"
    shutil.copytree(shards, out)
    index = json.loads((out / "shards.json").read_text())
    index.update(edit)
    (out / "shards.json").write_text(json.dumps(index))
    return out


@pytest.mark.parametrize(
    "edit",
    [
        {"shards": 3},
        {"charset": None},
        {"num_samples": "16"},
        {"shards": [{"name": "shard-000000.tar"}]},
        {"shards": [{"name": "../outside.tar", "count": 8}]},
        {"shards": [{"name": "/etc/hostname", "count": 8}]},
    ],
)
def test_a_shards_json_of_the_wrong_shape_is_refused(shards, tmp_path, edit) -> None:
    """A hand-edited or foreign shards.json was a KeyError deep in train; a shard name that
    leaves the folder would send the readers outside it."""
    with pytest.raises(InputError, match="not a shards.json written by `clipocr prepare`"):
        load_index(_index_copy(shards, tmp_path, edit))


def test_a_shard_deleted_after_prepare_is_named_before_training(shards, tmp_path) -> None:
    """It was a FileNotFoundError traceback from the data loader, mid-epoch."""
    from clipocr.train_student.config import TrainConfig
    from clipocr.train_student.trainer import Trainer

    folder = tmp_path / "shards"
    shutil.copytree(shards, folder)
    (folder / "shard-000001.tar").unlink()
    cfg = TrainConfig(shards=str(folder), distill=False, out=str(tmp_path / "run"), preset="test",
                      batch_size=8, max_steps=2, workers=0, threads=1, progress=False)  # fmt: skip
    with pytest.raises(InputError, match="shard-000001.tar: listed in shards.json but missing"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match="shard-000001.tar: listed in shards.json but missing"):
        shard_paths(folder)  # what cache-teacher checks first


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("batch_size", 0, "--batch-size 0: must be at least 1"),
        ("workers", -1, "--workers -1: must be 0 or more"),
        ("precision", "fp8", "--precision fp8: expected one of auto, bf16, fp16, fp32"),
    ],
)
def test_cache_runner_values_are_checked_before_any_task(field, value, match) -> None:
    """Inside the dask tasks they failed every shard, each with a traceback and two retries."""
    from clipocr.cache_teacher.runner import RunnerConfig

    with pytest.raises(InputError, match=match):
        RunnerConfig(**{field: value})


def test_a_failed_lmdb_write_leaves_nothing_and_names_the_lmdb(tmp_path) -> None:
    """LMDB reports a full disk (or a full map) as its own error type, not OSError: it was a
    traceback, and the unfinished temporary LMDB stayed behind."""
    out = tmp_path / "db"
    big = text_image("x", size=(2000, 400))
    with pytest.raises(InputError, match=f"{out}: could not write the LMDB") as err:
        with LmdbWriter(out, map_size=256 << 10, commit_every=1) as writer:
            for _ in range(200):
                writer.add(big, "word")
    assert "nothing was kept" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the LMDB nor its temporary folder


def test_synth_json_is_published_with_the_lmdb(tmp_path) -> None:
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.synth import render_lmdb

    out = tmp_path / "syn"
    render_lmdb(out, num=3, seed=0, charset=Charset.from_name("36"), progress=False)
    assert json.loads((out / "synth.json").read_text())["num_samples"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]


def test_an_os_error_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch) -> None:
    """`prepare --out` an existing file was a FileExistsError traceback."""
    db = write_lmdb(tmp_path / "db", [(text_image("ab"), "ab")])
    (tmp_path / "afile").write_text("x")
    code, _, err = run_console(main, "clipocr", capsys, monkeypatch, "prepare", "--lmdb", db,
                               "--out", tmp_path / "afile")  # fmt: skip
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == f"error: {tmp_path / 'afile'}: File exists"


def test_os_error_line_for_a_full_disk_says_what_to_do() -> None:
    import errno

    from clipocr.commands.common import os_error_line

    line = os_error_line(OSError(errno.ENOSPC, "No space left on device", "/data/x"))
    assert line.startswith("/data/x: No space left on device; free space and rerun")


def test_a_missing_validation_lmdb_is_an_error_before_training(tmp_path) -> None:
    """It was reported only after the whole run, at the first validation."""
    from clipocr.commands.train import validation

    with pytest.raises(InputError, match=f"{tmp_path / 'val'}: no such LMDB"):
        validation([str(tmp_path / "val")])


def test_an_empty_lmdb_is_named_when_there_is_nothing_to_time(tmp_path) -> None:
    from clipocr.evaluate.benchmark import first_images
    from clipocr.evaluate.datasets import dataset_from_path

    empty = write_lmdb(tmp_path / "empty", [])
    with pytest.raises(InputError, match=f"{empty}: no decodable image to time"):
        first_images([dataset_from_path(empty)], 4)


@pytest.mark.parametrize(
    ("budget", "match"),
    [
        ({"steps": 0}, "--steps 0: must be at least 1"),
        ({"minutes": 0}, "--minutes 0: must be positive"),
    ],
)
def test_an_empty_pretraining_budget_is_refused(tmp_path, budget, match) -> None:
    """`teacher-pretrain --steps 0` exited 0 and wrote an untrained teacher."""
    from clipocr.cache_teacher.pretrain_config import PretrainConfig

    with pytest.raises(InputError, match=match):
        PretrainConfig(data=[str(tmp_path / "db")], out=str(tmp_path / "out"), **budget)


def test_an_unreadable_image_is_named_without_pils_buffer_repr(tmp_path) -> None:
    from clipocr.evaluate.read import _decode

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert _decode(text) == (None, "not a readable image (no image format PIL knows)")
