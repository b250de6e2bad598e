"""Config files: unreadable files, unknown keys and wrongly typed values are one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clipocr.pipeline.config_file import check_values, read_values
from clipocr.pipeline.errors import InputError


@dataclass
class Inner:
    x: int = 1


@dataclass
class Example:
    steps: int | None = None
    lr: float = 1e-3
    name: str = ""
    flag: bool = True
    paths: list[str] = field(default_factory=list)
    patch: tuple[int, int] = (4, 8)
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize(
    "values",
    [
        {"steps": 3, "lr": 1, "name": "a", "flag": False, "paths": ["a", Path("b")]},
        {"steps": None, "patch": [2, 4], "inner": {"x": 2}},
        {"name": Path("/x")},
    ],
)
def test_values_of_the_right_type_pass(values) -> None:
    check_values(Example, values, "cfg.json")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": "2"}, "steps = '2' is not a valid"),
        ({"steps": 2.5}, "steps = 2.5"),
        ({"flag": 1}, "flag = 1"),
        ({"lr": True}, "lr = True"),
        ({"paths": "a"}, "paths = 'a'"),
        ({"patch": [1, 2, 3]}, "patch = [1, 2, 3]"),
        ({"inner": 3}, "inner = 3"),
        ({"stesp": 1}, "unknown config keys ['stesp']"),
    ],
)
def test_wrong_types_and_unknown_keys_are_refused(values, message) -> None:
    with pytest.raises(InputError, match="^cfg.json: ") as err:
        check_values(Example, values, "cfg.json")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"), [("{not json", "cannot read config"), ("[1, 2]", "one JSON object")]
)
def test_unreadable_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_values(path)
    with pytest.raises(InputError, match="cannot read config"):
        read_values(tmp_path / "missing.json")
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match="cannot read config"):
        read_values(path)


def test_no_file_means_no_values() -> None:
    assert read_values(None) == {}
