"""The `clipocr` typer app: one sub-command per job, registered from the command modules."""

from __future__ import annotations

import typer

from clipocr.commands import data, demo, eval, export, lmdb, read, teacher, train
from clipocr.commands.common import run_app

app = typer.Typer(
    help=(
        "Train small scene text recognizers by distilling a frozen CLIP teacher whose per-stage "
        "features are computed once and cached (CLIP-OCR, ACM MM 2023).\n\n"
        "Jobs, in order: synth (render words) → prepare (tar shards) → cache-teacher (GPU, once)"
        " → train (no CLIP loaded) → eval (benchmark LMDBs) → read (image files). `demo` runs "
        "them all."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("synth")(data.synth)
app.command("prepare")(data.prepare)
app.command("lmdb")(lmdb.lmdb)
app.command("cache-teacher")(teacher.cache_teacher)
app.command("teacher-pretrain")(teacher.teacher_pretrain)
app.command("train")(train.train)
app.command("eval")(eval.evaluate_command)
app.command("read")(read.read)
app.command("export")(export.export)
app.command("demo")(demo.demo_command)


def main() -> None:
    """Console-script entry of `clipocr`."""
    run_app(app, "clipocr")
