"""StudentConfig: which decoder layer each preset and each saved config gets."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from clipocr.train_student.checkpoint import BUNDLED_STUDENT
from clipocr.train_student.student_config import PRESETS, StudentConfig, student_config


def test_the_paper_presets_use_the_official_layer_and_the_cpu_presets_the_standard_one() -> None:
    for name in ("small", "tiny", "base", "test"):
        assert PRESETS[name].dec_layer == "official", name
    for name in ("mini", "demo"):  # the demo's student was trained with the standard layer
        assert PRESETS[name].dec_layer == "standard", name
    assert StudentConfig().dec_layer == "official"
    assert student_config("demo", dec_layer="official").dec_layer == "official"


def test_a_config_saved_before_the_field_existed_gets_the_layer_it_was_built_with() -> None:
    old = PRESETS["mini"].to_dict()
    del old["dec_layer"]
    assert StudentConfig.from_dict(old).dec_layer == "standard"
    for cfg in PRESETS.values():  # a config that records its layer keeps it
        assert StudentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_the_bundled_student_records_the_standard_layer() -> None:
    with safe_open(BUNDLED_STUDENT, framework="pt") as fh:
        saved = json.loads(fh.metadata()["config"])
    assert saved["dec_layer"] == "standard"
    assert StudentConfig.from_dict(saved).dec_layer == "standard"


def test_an_unknown_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="dec_layer 'parallel' is not one of"):
        StudentConfig(dec_layer="parallel")
