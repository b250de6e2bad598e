"""`clipocr lmdb FOLDER OUT`: a labelled image folder as a shareable STR LMDB (issue 21)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def lmdb(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Image folder with labels.tsv (relpath<TAB>label, as prepare --folder)."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="LMDB folder to create (must not exist).")],
) -> None:
    """Write a labelled image folder as a community STR LMDB (num-samples, image-%09d,
    label-%09d from 1: what PARSeq's create_lmdb_dataset.py writes), to share a test set and
    score it like the benchmarks (clipocr-eval --data also reads the folder itself).

    Image bytes are kept as they are and labels as listed; images that do not decode and
    duplicate rows are left out and counted.
    """
    from clipocr.pipeline.folder_lmdb import folder_to_lmdb

    result = folder_to_lmdb(folder, out)
    skipped = ", ".join(f"{n} {why}" for why, n in result.skipped.items()) or "none"
    typer.echo(f"wrote {result.num_samples} samples to {out}; left out: {skipped}")
