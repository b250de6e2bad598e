"""PretrainConfig: defaults ← JSON file ← given values; the saved record reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipocr.cache_teacher.pretrain_config import ARGS_NAME, PretrainConfig
from clipocr.pipeline.errors import InputError

BUNDLED = Path(__file__).parents[1] / "clipocr" / "assets" / "teacher" / ARGS_NAME


def test_file_values_override_defaults_and_given_values_override_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": ["a"], "out": "o", "steps": 5, "lr": 0.1, "seed": 4}))
    cfg = PretrainConfig.from_sources(path, {"lr": 0.2, "seed": None, "patch": [16, 4]})
    assert cfg.lr == 0.2 and cfg.seed == 4 and cfg.steps == 5  # None = not given
    assert cfg.batch_size == 128 and cfg.warmup == 200 and cfg.weight_decay == 0.1
    assert cfg.patch == (16, 4) and cfg.data == ["a"]


def test_paths_become_strings_and_one_path_a_list(tmp_path):
    cfg = PretrainConfig(data=tmp_path / "words", out=tmp_path / "out", val=tmp_path, minutes=1)
    assert cfg.data == [str(tmp_path / "words")] and cfg.out == str(tmp_path / "out")
    assert cfg.val == str(tmp_path)


def test_save_writes_the_settings_and_versions_and_reads_back(tmp_path):
    cfg = PretrainConfig(data=["a", "b"], out=str(tmp_path / "run"), steps=3, command="x")
    path = cfg.save()
    assert path == tmp_path / "run" / ARGS_NAME
    record = json.loads(path.read_text())
    assert record["patch"] == [32, 4] and record["command"] == "x" and record["torch"]
    assert set(record) >= {"open_clip", "eval_every_min", "log_every", "data", "val", "out"}
    back = PretrainConfig.from_sources(path, {})
    assert back == PretrainConfig(data=["a", "b"], out=str(tmp_path / "run"), steps=3)


def test_the_bundled_teachers_record_is_a_config():
    cfg = PretrainConfig.from_sources(BUNDLED, {"out": "elsewhere"})
    assert cfg.minutes == 55 and cfg.lr == 1e-3 and cfg.width == 128 and cfg.out == "elsewhere"
    assert cfg.command is None  # the record's command line is not this run's


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"data": ["a"], "out": "o"}, "--steps or --minutes"),
        ({"out": "o", "steps": 1}, "--data"),
        ({"data": ["a"], "steps": 1}, "--out"),
        ({"data": ["a"], "out": "o", "steps": 1, "lerning_rate": 1}, "lerning_rate"),
    ],
)
def test_incomplete_or_unknown_settings_are_input_errors(values, match):
    with pytest.raises(InputError, match=match):
        PretrainConfig.from_sources(None, values)


def test_unreadable_config_file_is_an_input_error(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read config"):
        PretrainConfig.from_sources(tmp_path / "bad.json", {})
