"""clipocr: distil a frozen CLIP teacher, cached once to Zarr, into small scene text recognizers.

``from clipocr import Reader`` is the Python API (`clipocr.evaluate.reader`): resolved lazily,
so ``import clipocr`` (which every command and worker does) stays free of torch until used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from clipocr.evaluate.reader import Reader, Reading

_LAZY = {"Reader": "clipocr.evaluate.reader", "Reading": "clipocr.evaluate.reader"}
__all__ = ["Reader", "Reading", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipocr' has no attribute {name!r}")
