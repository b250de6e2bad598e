"""Typed job configs from three sources: dataclass defaults ← a JSON file ← explicit flags.

Shared by `TrainConfig` and `PretrainConfig` so both refuse the same way what a user can get
wrong in a hand-written file: an unreadable or non-object file, an unknown key, a value of the
wrong type (``"max_steps": "2"``). Each message names the file and the key, in one line.
Range checks (``batch_size >= 1``) stay with each config, which knows its fields' meaning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from clipocr.pipeline.errors import InputError


def read_values(config_file: Path | None) -> dict[str, Any]:
    """The JSON object in `config_file` (empty without one)."""
    if config_file is None:
        return {}
    try:
        values = json.loads(Path(config_file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{config_file}: cannot read config ({err})") from None
    if not isinstance(values, dict):
        raise InputError(f"{config_file}: a config file holds one JSON object of settings")
    return values


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON-decoded `value` fits the field annotation `hint` (None where optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:  # a path given as a flag arrives as a Path
        return isinstance(value, (str, os.PathLike))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and len(args) > 1:
            return len(value) == len(args) and all(map(_matches, value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return True


def check_values(
    cls: type,
    values: dict[str, Any],
    source: str,
    nested: dict[str, type] | None = None,
    _within: str = "",
) -> None:
    """Refuse unknown keys and values of the wrong type for the dataclass `cls`.

    An object given for a dataclass-typed field (``"heads": {...}``), or for a field that
    `nested` maps to a dataclass (``"student": {...}`` of `StudentConfig` settings, a plain dict
    in the config), is checked key by key too. Why: a wrongly typed value that reaches the
    dataclass's own checks fails there with whatever Python says (``"big" % 6``: "not all
    arguments converted during string formatting"), not with the key and the value at fault.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        what = f"{_within.rstrip('.')} settings" if _within else "config keys"
        raise InputError(f"{source}: unknown {what} {sorted(unknown)}")
    for key, value in values.items():
        hint = (nested or {}).get(key, hints[key])
        if isinstance(value, dict) and dataclasses.is_dataclass(hint):
            check_values(hint, value, source, _within=f"{_within}{key}.")
            continue
        if not _matches(value, hints[key]):
            want = hints[key].__name__ if isinstance(hints[key], type) else str(hints[key])
            raise InputError(f"{source}: {_within}{key} = {value!r} is not a valid {want}")
