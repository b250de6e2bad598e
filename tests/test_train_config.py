"""TrainConfig: defaults ← file ← flags, and one-line errors for values a user can get wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipocr.pipeline.errors import InputError
from clipocr.train_student.config import TrainConfig


def _from_file(tmp_path: Path, values: dict) -> TrainConfig:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"shards": "s", "distill": False, **values}))
    return TrainConfig.from_sources(path, {})


def test_flags_override_the_file_which_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"shards": "s", "distill": False, "lr": 0.1, "seed": 4,
                                "heads": {"lambda1": 2.0}}))  # fmt: skip
    cfg = TrainConfig.from_sources(path, {"lr": 0.2, "seed": None, "heads": {}})
    assert (cfg.lr, cfg.seed, cfg.batch_size, cfg.heads.lambda1) == (0.2, 4, 160, 2.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"max_steps": "2"}, "max_steps = '2' is not a valid"),
        ({"keep_checkpoints": -100}, "keep_checkpoints must be >= 1"),
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"lr": -1.0}, "lr must be >= 0.0"),
        ({"warmup_pct": 1.5}, "warmup_pct must be in [0, 1)"),
        ({"workers": -1}, "workers must be >= 0"),
        ({"heads": [1]}, "heads must be an object"),
        ({"val": "a.lmdb"}, "val = 'a.lmdb' is not a valid"),
        ({"augment_on": "gpu"}, "augment_on must be host or device, got 'gpu'"),
        ({"student": {"enc_dim": "big"}}, "train.json: student.enc_dim = 'big' is not a valid int"),
        ({"student": {"encdim": 64}}, "train.json: unknown student settings ['encdim']"),
        ({"heads": {"tau": "x"}}, "train.json: heads.tau = 'x' is not a valid float"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path: Path, values: dict, message: str) -> None:
    with pytest.raises(InputError) as err:
        _from_file(tmp_path, values)
    assert message in str(err.value) and "\n" not in str(err.value)
