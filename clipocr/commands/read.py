"""`clipocr read [CHECKPOINT] PATH…`: read the text in image files with a trained student.

The command is `clipocr.Reader` (`evaluate.reader`) plus file finding and printing, so the
command line and the Python API never disagree.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from clipocr.commands.common import ThreadsOption
from clipocr.pipeline.errors import InputError


def _split_checkpoint(args: list[Path], onnx: Path | None) -> tuple[Path | None, list[Path]]:
    """(checkpoint, image paths): a first argument that is a ``.safetensors`` file names the
    student, otherwise the bundled one reads (None), or the `--onnx` graph."""
    if args and args[0].suffix == ".safetensors":
        if onnx is not None:
            raise InputError(f"{args[0]}: give a student checkpoint or --onnx, not both")
        if len(args) == 1:
            raise InputError(f"{args[0]}: a student checkpoint, but no image files or folders")
        return args[0], args[1:]
    return onnx, args


def _error_line(message: str) -> None:
    """An error on stderr that does not break a progress bar drawn there."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        typer.secho(message, err=True, fg="red")


def _row(line: str) -> None:
    """A result on stdout; on a terminal, around the progress bar that stderr shares with it."""
    if not sys.stdout.isatty():
        typer.echo(line)
        return
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        typer.echo(line)


def read(
    args: Annotated[
        list[Path],
        typer.Argument(
            help="[CHECKPOINT] PATH…: an optional student checkpoint (a .safetensors file; "
            "default: the bundled student, see clipocr/assets/student/STUDENT.md), then image "
            "files, or folders searched for image files.",
            show_default=False,
        ),
    ],
    onnx: Annotated[
        Path | None,
        typer.Option(
            help="Read with an ONNX model written by `clipocr export` (through onnxruntime: "
            "pip install 'clipocr\\[export]') instead of a checkpoint.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda[:N]; default cuda when available.")
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object per file (path, text, confidence, char_confidences, "
            "error) instead of TSV.",
        ),
    ] = False,
    progress: Annotated[
        bool,
        typer.Option(help="A progress bar on stderr when there is more than one batch."),
    ] = True,
    threads: ThreadsOption = None,
) -> None:
    """Print each file's text and confidence: TSV rows of path, text, confidence (or --json).

    In the TSV, a backslash, tab, newline or carriage return in a path is written as \\\\,
    \\t, \\n or \\r, and a byte that is not UTF-8 as \\xNN (undone by one left-to-right
    pass), so each file is one row of three fields whatever its name (--json escapes as JSON).

    Without a CHECKPOINT the bundled student reads (1.6 M parameters, trained here on rendered
    words and real IIIT5k/IC15 training crops; lower-case letters and digits).

    A file that cannot be read is reported on stderr (one line) and the others are still read;
    the exit code is 1 if any file failed.
    """
    import torch

    from clipocr.evaluate.read import image_files, tsv_field
    from clipocr.evaluate.reader import Reader, resolve_device
    from clipocr.pipeline.threads import cpu_threads

    checkpoint, paths = _split_checkpoint(args, onnx)
    dev = resolve_device(device)
    if dev == "cpu":  # the same count for torch and an ONNX Runtime session
        try:
            threads = cpu_threads(workers=0, threads=threads).intra_op
        except ValueError as err:
            raise InputError(f"--threads {threads}: {err}") from None
        torch.set_num_threads(threads)
    files = image_files(paths)
    if not files:
        raise InputError(f"{', '.join(map(str, paths)) or 'no path given'}: no image files found")
    reader = Reader(checkpoint, device=dev, batch_size=batch_size, threads=threads)
    failed = 0
    for reading in reader.iter_read(files, errors="report", progress=progress):
        if not reading.ok:
            failed += 1
            _error_line(f"error: {tsv_field(reading.path)}: {reading.error}")
            if not json_out:
                continue
        if json_out:
            _row(json.dumps(asdict(reading)))  # ASCII: a non-UTF-8 name prints too
        else:
            _row(f"{tsv_field(reading.path)}\t{reading.text}\t{reading.confidence:.4f}")
    if failed:
        raise typer.Exit(1)
