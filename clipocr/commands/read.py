"""`clipocr read [CHECKPOINT] PATH…`: read the text in image files with a trained student."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from clipocr.commands.common import ThreadsOption
from clipocr.pipeline.errors import InputError


def _split_checkpoint(args: list[Path]) -> tuple[Path, list[Path]]:
    """(checkpoint, image paths): a first argument that is a ``.safetensors`` file names the
    student, otherwise the bundled one reads."""
    from clipocr.train_student.checkpoint import BUNDLED_STUDENT

    if args and args[0].suffix == ".safetensors":
        if len(args) == 1:
            raise InputError(f"{args[0]}: a student checkpoint, but no image files or folders")
        return args[0], args[1:]
    return BUNDLED_STUDENT, args


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
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda[:N]; default cuda when available.")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per file instead of TSV.")
    ] = False,
    threads: ThreadsOption = None,
) -> None:
    """Print each file's text and confidence (TSV: path, text, confidence; or --json).

    Without a CHECKPOINT the bundled student reads (1.6 M parameters, trained here on rendered
    words and real IIIT5k/IC15 training crops; lower-case letters and digits).

    A file that cannot be read is reported on stderr and the others are still read; the exit
    code is 1 if any file failed.
    """
    import torch

    from clipocr.commands.eval import resolve_device
    from clipocr.evaluate.read import image_files, read_images
    from clipocr.pipeline.threads import cpu_threads
    from clipocr.train_student.checkpoint import load_student

    checkpoint, paths = _split_checkpoint(args)
    dev = resolve_device(device)
    if dev == "cpu":
        torch.set_num_threads(cpu_threads(workers=0, threads=threads).intra_op)
    files = image_files(paths)
    if not files:
        raise InputError(f"{', '.join(map(str, paths))}: no image files found")
    student = load_student(checkpoint, map_location=dev)
    failed = 0
    for reading in read_images(student, files, batch_size):
        if not reading.ok:
            failed += 1
            typer.secho(f"error: {reading.path}: {reading.error}", err=True, fg="red")
            if not json_out:
                continue
        if json_out:
            typer.echo(json.dumps(asdict(reading)))
        else:
            typer.echo(f"{reading.path}\t{reading.text}\t{reading.confidence:.4f}")
    if failed:
        raise typer.Exit(1)
