"""`clipocr synth` and `clipocr prepare`: make training data (DESIGN §3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipocr.commands.common import CharsetOption, SeedOption


def synth(
    out: Annotated[Path, typer.Option(help="LMDB folder to create (must not exist).")],
    num: Annotated[int, typer.Option(help="Number of word images to render.")] = 1000,
    seed: SeedOption = 0,
    charset: CharsetOption = "36",
    style: Annotated[
        str,
        typer.Option(help="'clean' (IIIT5k-like signs) or 'hard' (IC15-like: blur, distortion)."),
    ] = "clean",
    fonts: Annotated[
        Path | None, typer.Option(help="Extra folder of TTF/OTF faces to render with.")
    ] = None,
    backgrounds: Annotated[
        Path | None,
        typer.Option(
            help="Extra folder of photos (PNG/JPEG …) to crop backgrounds from, beside the "
            "ones installed packages ship."
        ),
    ] = None,
    shards: Annotated[
        Path | None, typer.Option(help="Also prepare tar shards of the result into this folder.")
    ] = None,
) -> None:
    """Render MJSynth-like word images (real lexicon, pip-installed fonts) into an STR LMDB."""
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.shards import prepare_shards
    from clipocr.pipeline.synth import render_lmdb

    cs = Charset.from_spec(charset)
    meta = render_lmdb(
        out, num=num, seed=seed, charset=cs, style=style, fonts_dir=fonts,
        backgrounds_dir=backgrounds,
    )  # fmt: skip
    typer.echo(
        f"wrote {meta.num_samples} images to {out} "
        f"({len(meta.fonts)} faces covering {cs.describe()}, {meta.images_per_s:.0f} img/s)"
    )
    if shards is not None:
        index = prepare_shards([out], shards, cs)
        typer.echo(f"prepared {index.num_samples} samples into {len(index.shards)} shards")


def prepare(
    out: Annotated[Path, typer.Option(help="Folder to write the tar shards and shards.json to.")],
    lmdb: Annotated[
        list[Path] | None, typer.Option(help="STR LMDB to convert (repeatable).")
    ] = None,
    folder: Annotated[
        list[Path] | None,
        typer.Option(help="Image folder with labels.tsv (relpath<TAB>label) (repeatable)."),
    ] = None,
    charset: CharsetOption = "36",
    shard_size: Annotated[int, typer.Option(help="Samples per tar shard.")] = 5000,
) -> None:
    """Convert LMDBs / labelled image folders into WebDataset tar shards (resumable).

    Labels are prepared as PARSeq does (DESIGN §3); rejected labels, unreadable images and
    duplicate labels.tsv rows are counted by reason in shards.json (a file listed twice with two
    labels is refused). Rerunning after an interruption keeps finished shards.
    """
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.shards import prepare_shards

    cs = Charset.from_spec(charset)
    index = prepare_shards([*(lmdb or []), *(folder or [])], out, cs, shard_size)
    typer.echo(
        f"prepared {index.num_samples} samples into {len(index.shards)} shards at {out} "
        f"({cs.describe()}); skipped: {index.skipped or 'none'}"
    )
