"""Option definitions shared by several commands, and the one handler for bad input."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from clipocr.pipeline.errors import InputError

CHARSET_HELP = "Label charset: 36 (0-9a-z, the papers'), 62 (adds A-Z) or 94 (printable ASCII)."

CharsetOption = Annotated[str, typer.Option(help=CHARSET_HELP)]
SeedOption = Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help="torch CPU threads (default: chosen from the usable cores and the worker count)."
    ),
]


def run_app(app: typer.Typer, prog_name: str) -> None:
    """Run a typer app as a console script: bad input becomes one red line and exit code 2.

    Library code raises `InputError` for anything the user can fix (a missing file, a bad
    value); a traceback is kept for real bugs.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("clipocr").setLevel(logging.INFO)  # our own notes (threads, sizes) show
    try:
        app(prog_name=prog_name)
    except InputError as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        sys.exit(2)
