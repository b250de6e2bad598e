"""`clipocr export`: a student checkpoint → one ONNX or TorchScript file with greedy decoding.

The graph is `train_student.export_graph.GreedyGraph` (why one graph of fixed length: see there),
uint8 pixels in, ``ids``/``probs`` out, with a dynamic batch dimension. Every export is checked
before it is published: the written file is run (onnxruntime / `torch.jit.load`) on a batch of
another size than the traced one and must give the PyTorch graph's ids exactly and its
probabilities within `CHECK_TOLERANCE`; a mismatch is refused, never written under the name.
The file appears atomically (written beside, then renamed).

ONNX uses torch's dynamo exporter (`torch.onnx.export(dynamo=True)`, which needs ``onnx`` and
``onnxscript``) and is checked with ``onnxruntime``: the optional extra ``clipocr[export]``.
TorchScript needs nothing beyond torch.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipocr.evaluate.graph_backend import (
    EXTRA_HINT,
    TORCHSCRIPT_META,
    graph_metadata,
    onnx_backend,
    torchscript_backend,
)
from clipocr.pipeline.errors import InputError
from clipocr.train_student.checkpoint import load_student
from clipocr.train_student.export_graph import INPUT_NAME, OUTPUT_NAMES, GreedyGraph
from clipocr.train_student.model import Student

FORMATS = ("onnx", "torchscript")
CHECK_TOLERANCE = 1e-5  # max |probs difference| between the file and PyTorch on the check batch
TRACE_BATCH, CHECK_BATCH = 2, 5  # a check batch of another size proves the batch is dynamic


@dataclass(frozen=True)
class ExportResult:
    """What was written: the file, its format and size, the export's wall time, and the check
    (the largest probability difference from PyTorch on `CHECK_BATCH` images; None if the file
    could not be run here, e.g. onnxruntime is not installed)."""

    path: str
    format: str
    bytes: int
    seconds: float
    max_prob_diff: float | None


def _example(batch: int, seed: int) -> torch.Tensor:
    """Random uint8 pixels: the trace needs shapes only; the check needs images whose decodes
    differ, which noise gives."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, 32, 128), generator=gen, dtype=torch.uint8)


def _write_onnx(graph: GreedyGraph, tmp: Path, meta: dict[str, str], opset: int | None) -> None:
    """Export with torch's dynamo exporter, then let onnxruntime simplify the graph.

    Why not the exporter's own optimiser (``optimize=True``): on this unrolled graph (≈ 16 k
    nodes for the bundled student) it ran for over ten CPU minutes; onnxruntime's *basic*
    level (constant folding, redundant-node removal: rewrites that hold on any machine, unlike
    its extended ones) takes seconds and writes a file a third the size, which then loads
    faster. The metadata is written last, with ``onnx``, onto whatever file results."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it and says so poorly)
    except ImportError:
        raise InputError(f"--format onnx needs onnx and onnxscript ({EXTRA_HINT})") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about timm's shape asserts
        program = torch.onnx.export(
            graph,
            (_example(TRACE_BATCH, 0),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={INPUT_NAME: {0: batch}},
            opset_version=opset,
            external_data=False,
            optimize=False,
            verbose=False,
        )
    program.save(str(tmp))
    _simplify_with_onnxruntime(tmp)
    model = onnx.load(str(tmp))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(tmp))


def _simplify_with_onnxruntime(path: Path) -> None:
    """Rewrite `path` with onnxruntime's basic graph optimisations (skipped without it)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    simplified = path.with_name(path.name + ".basic")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(simplified)
    options.intra_op_num_threads = 1
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        os.replace(simplified, path)
    finally:
        simplified.unlink(missing_ok=True)


def _write_torchscript(graph: GreedyGraph, tmp: Path, meta: dict[str, str]) -> None:
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit's deprecation notice, tracer chatter on asserts
        traced = torch.jit.trace(graph, (_example(TRACE_BATCH, 0),), check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})


def _check(graph: GreedyGraph, tmp: Path, fmt: str, out: Path) -> float | None:
    """Run the written file on `CHECK_BATCH` images; refuse it unless it decodes as PyTorch."""
    images = _example(CHECK_BATCH, 1)
    with torch.inference_mode():
        want_ids, want_probs = (t.numpy() for t in graph(images))
    try:
        if fmt == "onnx":
            run, _ = onnx_backend(tmp, "cpu", threads=1)
        else:
            run, _ = torchscript_backend(tmp, "cpu")
    except InputError as err:
        if "needs onnxruntime" in str(err):
            return None
        raise
    ids, probs = run(images.numpy())
    if ids.shape != want_ids.shape or not np.array_equal(ids, want_ids):
        raise InputError(f"{out}: the exported graph decodes differently from PyTorch; not written")
    diff = float(np.abs(probs - want_probs).max())
    if diff > CHECK_TOLERANCE:
        raise InputError(f"{out}: exported probabilities differ from PyTorch by {diff:.2e}")
    return diff


def export_student(
    student: Student, out: str | os.PathLike, fmt: str = "onnx", opset: int | None = None
) -> ExportResult:
    """Write `student` with greedy decoding to `out` as `fmt` (one of `FORMATS`), checked."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the file to write (e.g. {out}/student.{fmt})")
    out.parent.mkdir(parents=True, exist_ok=True)
    student = student.to("cpu").eval()
    graph = GreedyGraph(student)
    meta = graph_metadata(student.cfg)
    tmp = out.with_name(out.name + ".tmp")
    start = time.perf_counter()
    try:
        if fmt == "onnx":
            _write_onnx(graph, tmp, meta, opset)
        else:
            _write_torchscript(graph, tmp, meta)
        diff = _check(graph, tmp, fmt, out)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(str(out), fmt, out.stat().st_size, time.perf_counter() - start, diff)


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "onnx"
) -> ExportResult:
    """`export_student` of the student saved at `checkpoint` (refused in one line if it is not
    a clipocr student)."""
    return export_student(load_student(checkpoint, map_location="cpu"), out, fmt)
