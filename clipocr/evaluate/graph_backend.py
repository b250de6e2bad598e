"""Running a graph that `clipocr export` wrote: ONNX through onnxruntime, or TorchScript.

The graph (`train_student.export_graph`) takes uint8 ``(B, 3, 32, 128)`` RGB pixels and returns
``ids`` and ``probs`` ``(B, max_len + 1)``, EOS-padded — what `Student.generate` returns — so the
`Reader` decodes both backends with the same code. The file carries its own description in its
metadata (`graph_metadata`): the student's config, from which the charset is rebuilt, plus plain
words for users who run it from another language.

onnxruntime is an optional dependency (``pip install 'clipocr[export]'``); without it an ONNX
file is refused in one line that says so.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clipocr import __version__
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.errors import InputError
from clipocr.train_student.export_graph import INPUT_NAME
from clipocr.train_student.student_config import StudentConfig

GRAPH_FORMAT = "clipocr-greedy-graph"
GRAPH_FORMAT_VERSION = "1"
TORCHSCRIPT_META = "clipocr.json"  # the TorchScript archive's extra file holding the metadata
EXTRA_HINT = "pip install 'clipocr[export]'"

Backend = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def graph_metadata(cfg: StudentConfig) -> dict[str, str]:
    """What an exported file says about itself (ONNX ``metadata_props``, TorchScript extra
    file): the format, the config a reader rebuilds the charset from, and the contract in words."""
    charset = Charset.from_name(cfg.charset, cfg.max_len)
    return {
        "format": GRAPH_FORMAT,
        "format_version": GRAPH_FORMAT_VERSION,
        "clipocr_version": __version__,
        "student_config": json.dumps(cfg.to_dict()),
        "charset": charset.chars,
        "input": f"{INPUT_NAME}: uint8 (batch, 3, 32, 128), RGB, resized bicubic to 128x32 "
        "(aspect ratio not kept); normalisation is inside the graph",
        "outputs": f"ids: int64 (batch, {cfg.max_len + 1}), 0 = end of word, k = charset[k-1]; "
        "probs: float32, each step's probability; after the end ids are 0 with probability 1, "
        "so the product of a row is the word's confidence",
    }


def charset_of(meta: dict[str, str], path: Path) -> Charset:
    """The charset of an exported graph from its metadata, or one line saying what is wrong."""
    if meta.get("format") != GRAPH_FORMAT:
        raise InputError(f"{path}: not a graph written by `clipocr export` (no format marker)")
    if meta.get("format_version") != GRAPH_FORMAT_VERSION:
        raise InputError(
            f"{path}: export format version {meta.get('format_version')!r} is not supported"
        )
    try:
        cfg = StudentConfig.from_dict(json.loads(meta["student_config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: bad student_config metadata ({err})") from None
    return Charset.from_name(cfg.charset, cfg.max_len)


def _cuda_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def onnx_backend(path: Path, device: str, threads: int | None) -> tuple[Backend, Charset]:
    """An onnxruntime session over `path`: (batch → (ids, probs), charset)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError(
            f"{path}: reading an ONNX model needs onnxruntime ({EXTRA_HINT})"
        ) from None
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers: list = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError(
                f"{path}: this onnxruntime has no CUDA provider (install onnxruntime-gpu, or "
                "use --device cpu)"
            )
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": _cuda_index(device)}))
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own types for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not an ONNX model onnxruntime can load ({first})") from None
    charset = charset_of(dict(session.get_modelmeta().custom_metadata_map), path)

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, probs = session.run(None, {INPUT_NAME: np.ascontiguousarray(batch)})
        return ids, probs

    return run, charset


def torchscript_backend(path: Path, device: str) -> tuple[Backend, Charset]:
    """A TorchScript graph from `path` on `device`: (batch → (ids, probs), charset)."""
    import torch

    extra = {TORCHSCRIPT_META: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a TorchScript graph torch can load ({first})") from None
    try:
        meta = json.loads(extra[TORCHSCRIPT_META] or "{}")
    except ValueError:
        meta = {}
    charset = charset_of(meta, path)

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            ids, probs = module(torch.from_numpy(batch).to(device))
        return ids.cpu().numpy(), probs.cpu().numpy()

    return run, charset
