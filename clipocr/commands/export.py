"""`clipocr export CHECKPOINT --format onnx|torchscript --out FILE`: the student as one graph.

The graph is the whole recognizer with greedy decoding (`train_student.export_graph`): uint8
pixels in, ids and per-step probabilities out, dynamic batch. The work is
`evaluate.export.export_checkpoint`; this module parses flags and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="A student checkpoint (.safetensors), or 'bundled' for the bundled student.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option(help="The file to write (e.g. student.onnx).")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="onnx (run with onnxruntime; needs pip install 'clipocr\\[export]') or "
            "torchscript (torch.jit.load).",
        ),
    ] = "onnx",
) -> None:
    """Write the student with greedy decoding as one ONNX or TorchScript graph.

    Input: uint8 images (batch, 3, 32, 128), RGB, resized bicubic to 128x32; the batch size is
    free. Outputs: ids (batch, max_len + 1; 0 = end of word, k = the charset's k-th symbol) and
    each step's probability (1 after the end, so a row's product is the word's confidence).
    The file's metadata holds the charset and the student's config. Before it is written under
    its name, the file is run on a batch of another size and must decode as PyTorch does.
    `clipocr read --onnx FILE` and `clipocr.Reader(FILE)` read with it.
    """
    from clipocr.evaluate.export import export_checkpoint
    from clipocr.train_student.checkpoint import BUNDLED_STUDENT

    source = BUNDLED_STUDENT if checkpoint == "bundled" else Path(checkpoint)
    result = export_checkpoint(source, out, format)
    check = (
        f"checked against PyTorch (max probability difference {result.max_prob_diff:.1e})"
        if result.max_prob_diff is not None
        else "not run here (onnxruntime is not installed)"
    )
    typer.echo(
        f"{result.path}: {result.format}, {result.bytes / 1e6:.1f} MB, exported in "
        f"{result.seconds:.0f} s; {check}"
    )
