"""Evaluation under PARSeq's test protocol: metrics, benchmark discovery, the `clipocr-eval` CLI.

`evaluate(model, lmdb_paths) -> Report` is shared by the CLI and the trainer's validation, so the
two always agree. Imports only `train_student` (the model) and `pipeline` — never open_clip.
The exports are resolved lazily so `clipocr --help`, which imports `clipocr.evaluate.cli`, does
not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipocr.evaluate.benchmark import Report, discover_lmdbs, evaluate

__all__ = ["Report", "discover_lmdbs", "evaluate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from clipocr.evaluate import benchmark

        return getattr(benchmark, name)
    raise AttributeError(f"module 'clipocr.evaluate' has no attribute {name!r}")
