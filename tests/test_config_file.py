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
        ({"inner": {"x": "big"}}, "inner.x = 'big' is not a valid int"),
        ({"inner": {"y": 1}}, "unknown inner settings ['y']"),
        ({"patch": [4, "a"]}, "patch = [4, 'a'] is not a valid tuple[int, int]"),
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


def test_a_plain_dict_field_is_checked_as_the_dataclass_it_holds() -> None:
    """Issue 23: ``"student": {"enc_dim": "big"}`` (a dict of StudentConfig settings) leaked
    Python's "not all arguments converted during string formatting"; `nested` names the
    dataclass a dict field holds, so the key and value at fault are named instead."""

    @dataclass
    class Outer:
        student: dict = field(default_factory=dict)

    check_values(Outer, {"student": {"x": "big"}}, "cfg.json")  # without `nested`: any dict
    with pytest.raises(InputError, match=r"^cfg.json: student.x = 'big' is not a valid int$"):
        check_values(Outer, {"student": {"x": "big"}}, "cfg.json", nested={"student": Inner})
