"""The `clipocr` command line: one sub-command per job.

Each package owns its commands in a light ``commands.py`` whose functions import the heavy
modules (torch, open_clip, dask) only when they run, so `clipocr --help` stays fast and
`train`/`eval` never import open_clip. Bad input raises `InputError`, printed here as one line.
"""

from __future__ import annotations

import logging
import sys

import typer

from clipocr.pipeline.errors import InputError

app = typer.Typer(
    help=(
        "Train small scene text recognizers by distilling a frozen CLIP teacher whose per-stage "
        "features are computed once and cached (CLIP-OCR, ACM MM 2023).\n\n"
        "Jobs, in order: synth (render words) → prepare (tar shards) → cache-teacher (GPU, once)"
        " → train (no CLIP loaded) → eval (benchmark LMDBs). `demo` runs them all."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from clipocr import demo
    from clipocr.cache_teacher import commands as teacher_commands
    from clipocr.evaluate import cli as eval_cli
    from clipocr.pipeline import commands as pipeline_commands
    from clipocr.train_student import commands as train_commands

    app.command("synth")(pipeline_commands.synth)
    app.command("prepare")(pipeline_commands.prepare)
    app.command("cache-teacher")(teacher_commands.cache_teacher)
    app.command("teacher-pretrain")(teacher_commands.teacher_pretrain)
    app.command("train")(train_commands.train)
    app.command("eval")(eval_cli.evaluate_command)
    app.command("demo")(demo.demo_command)


_register()


def main() -> None:
    """Console-script entry: run the app, turning bad input into one line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(prog_name="clipocr")
    except InputError as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        sys.exit(2)
