"""Inside the teacher-store package, modules form layers too: no import circle, counting imports
made only for type checking (issue 22 removed writer ↔ group_writer ↔ text_table and
reader ↔ verify)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "clipocr" / "pipeline" / "teacher_store"
PREFIX = "clipocr.pipeline.teacher_store"


def _edges() -> dict[str, set[str]]:
    mods = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    edges = {}
    for name in mods:
        out = set()
        for node in ast.walk(ast.parse((PKG / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == PREFIX:
                out |= {a.name if a.name in mods else "__init__" for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PREFIX + "."):
                out.add(node.module.rsplit(".", 1)[1])
        edges[name] = out - {name}
    return edges


def _circle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_circle_inside_the_store_package() -> None:
    edges = _edges()
    assert "__init__" not in set().union(*edges.values())  # modules import modules, not the package
    assert _circle(edges) is None, " → ".join(_circle(edges))


def test_the_check_finds_a_circle() -> None:
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
