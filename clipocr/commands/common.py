"""Option definitions shared by several commands, and the one handler for bad input."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from clipocr.pipeline.errors import InputError, RunInterrupted

CHARSET_HELP = (
    "Label charset: 36 (0-9a-z, the papers'), 62 (adds A-Z), 94 (printable ASCII), or your own "
    "alphabet: a FILE with one symbol per line (or all on one line) or a string of symbols; its "
    "labels keep their Unicode (NFC), no ASCII folding."
)

CharsetOption = Annotated[str, typer.Option(help=CHARSET_HELP)]
SeedOption = Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help="torch CPU threads (default: chosen from the usable cores and the worker count)."
    ),
]


def os_error_line(err: OSError) -> str:
    """One line for an error of the machine rather than of the code: the file it concerns, the
    OS's words, and for a full disk what to do."""
    from clipocr.pipeline.shards import DISK_FULL

    where = f"{err.filename}: " if err.filename else ""
    line = f"{where}{err.strerror or err}"
    if err.errno in DISK_FULL:
        line += "; free space and rerun the same command (finished parts are kept)"
    return line


def run_app(app: typer.Typer, prog_name: str) -> None:
    """Run a typer app as a console script: bad input becomes one red line and exit code 2.

    Library code raises `InputError` for anything the user can fix (a missing file, a bad
    value); a traceback is kept for real bugs. An `OSError` that reaches here (a file in the way,
    a read-only or full disk, a permission) is the machine's, not a bug, like `RunInterrupted`:
    one line, exit code 1.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("clipocr").setLevel(logging.INFO)  # our own notes (threads, sizes) show
    try:
        app(prog_name=prog_name)
    except InputError as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        sys.exit(2)
    except RunInterrupted as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        sys.exit(1)
    except OSError as err:
        typer.secho(f"error: {os_error_line(err)}", err=True, fg="red")
        sys.exit(1)
