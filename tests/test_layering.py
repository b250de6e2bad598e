"""The house rules of DESIGN §2, read from the source with `ast` (function-local imports too).

Packages are floors: a package may import only itself and the floors below it, so there is
never an import circle, the trainer and the evaluator never load CLIP, and typer lives on the
command floor alone.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "clipocr"

# package → the clipocr packages it may import (itself included)
ALLOWED = {
    "pipeline": {"pipeline"},
    "cache_teacher": {"pipeline", "cache_teacher"},
    "train_student": {"pipeline", "train_student"},
    "evaluate": {"pipeline", "train_student", "evaluate"},
    "commands": {"pipeline", "cache_teacher", "train_student", "evaluate", "commands"},
}
# third-party modules only some floors may import
RESTRICTED = {"typer": {"commands"}, "open_clip": {"cache_teacher"}}
MAX_LINES = 400


def _imports(path: Path) -> list[str]:
    """Absolute dotted names of every module `path` imports, relative imports resolved."""
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.append(module)
            if node.module is None or module in ("clipocr",):  # `from . import x`
                names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "assets" not in p.parts)


def _floor(path: Path) -> str | None:
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else None


def violations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        floor = _floor(path)
        for name in _imports(path):
            top, _, rest = name.partition(".")
            if top == "clipocr" and rest and floor is not None:
                target = rest.split(".")[0]
                if target in ALLOWED and target not in ALLOWED[floor]:
                    found.append(f"{path.relative_to(ROOT.parent)} imports {name}")
            for module, floors in RESTRICTED.items():
                if top == module and floor not in floors:
                    found.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    return found


def test_every_package_is_a_known_floor() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)


def test_no_package_imports_one_above_it() -> None:
    assert violations(_sources()) == []


def test_top_level_modules_only_start_the_cli() -> None:
    top = [p for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert top == [], "modules at the top of clipocr/ belong in a package"


def test_no_source_file_is_over_the_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize(
    ("floor", "line", "bad"),
    [
        ("pipeline", "from clipocr.train_student.model import Student", True),
        ("train_student", "def f():\n    from clipocr.evaluate import evaluate", True),
        ("train_student", "import open_clip", True),
        ("evaluate", "from ..cache_teacher import teacher", True),
        ("evaluate", "import typer", True),
        ("evaluate", "from clipocr.train_student.checkpoint import load_student", False),
        ("commands", "import typer\nfrom clipocr.cache_teacher import teacher", False),
    ],
)
def test_the_rule_catches_violations(
    tmp_path: Path, floor: str, line: str, bad: bool, monkeypatch
) -> None:
    """The checker itself can fail: planted imports are reported, allowed ones are not."""
    fake_root = tmp_path / "clipocr"
    (fake_root / floor).mkdir(parents=True)
    module = fake_root / floor / "planted.py"
    module.write_text(line + "\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    assert bool(violations([module])) is bad
