"""Evaluation under PARSeq's test protocol (DESIGN §7): what a student reads, scored as papers do.

Owns: benchmark names and discovery (`datasets`), per-sample scoring (`metrics`), the result types
(`results`), the evaluation loop and speed timing (`benchmark`), rendering a report as table,
JSON, TSV and grid (`report`), reading image files with a student (`read`), the Python API
`Reader` (`reader`), and exporting a student as one graph and running it (`export`,
`graph_backend`).

May import `pipeline` and `train_student`'s model and checkpoint only — never `cache_teacher`,
open_clip or typer (the command lives in `clipocr.commands.eval`). `evaluate(model, lmdb_paths)
-> Report` is shared by the command and the trainer's validation, so the two always agree.

The exports are resolved lazily so that importing this package (the command-line floor does)
does not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipocr.evaluate.benchmark import evaluate, measure_speed
    from clipocr.evaluate.datasets import Dataset, discover_lmdbs
    from clipocr.evaluate.results import Report, Row, Sample, Speed

_HOMES = {
    "Dataset": "datasets",
    "discover_lmdbs": "datasets",
    "Report": "results",
    "Row": "results",
    "Sample": "results",
    "Speed": "results",
    "evaluate": "benchmark",
    "measure_speed": "benchmark",
}
__all__ = [
    "Dataset",
    "Report",
    "Row",
    "Sample",
    "Speed",
    "discover_lmdbs",
    "evaluate",
    "measure_speed",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"clipocr.evaluate.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'clipocr.evaluate' has no attribute {name!r}")
