"""`clipocr-eval CHECKPOINT --data ROOT` (also `clipocr eval`): benchmark a student (DESIGN §7).

`run_evaluation` is the whole job as a function returning types (the demo calls it too); the
command only parses flags and prints. torch and the model are imported when it runs. ``--data``
finds benchmark LMDBs and a user's own labelled image folders (``labels.tsv``) alike.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clipocr.commands.common import ThreadsOption, run_app
from clipocr.pipeline.errors import InputError

if TYPE_CHECKING:
    from clipocr.evaluate.results import Report, Speed


@dataclass
class Evaluation:
    """One checkpoint evaluated: the report (figures derive from it) and the timing, if taken."""

    report: Report
    speed: Speed | None
    model_config: dict


def resolve_device(name: str | None) -> str:
    """`None` → cuda when available, else cpu; anything but cpu/cuda[:N] is refused."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: use cpu or cuda (cuda:N)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return name


def run_evaluation(
    checkpoint: Path,
    data: Path,
    *,
    names: list[str] | None = None,
    charset: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
    limit: int | None = None,
    speed: bool = True,
    echo: bool = True,
    threads: int | None = None,
    decoding: str = "ar",
) -> Evaluation:
    """Load the student, evaluate it on every test set under `data` (LMDBs and labelled image
    folders), optionally time it.

    Scored under the student's protocol (`protocol_charset`: the 36-symbol one, or a custom
    alphabet's own), and under `charset` too when given (a name, file or string). `threads`
    sets torch's CPU threads (None: `cpu_threads`' automatic choice); a GPU run leaves them."""
    from clipocr.pipeline.charset import Charset

    extra = None if charset is None else Charset.from_spec(charset).name
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no such checkpoint file")
    dev = resolve_device(device)

    import torch

    from clipocr.evaluate.benchmark import evaluate, first_images, measure_speed, protocol_charset
    from clipocr.evaluate.datasets import discover_datasets
    from clipocr.pipeline.threads import cpu_threads
    from clipocr.train_student.checkpoint import load_student

    if dev == "cpu":
        try:
            torch.set_num_threads(cpu_threads(workers=0, threads=threads).intra_op)
        except ValueError as err:
            raise InputError(f"--threads {threads}: {err}") from None
    found = discover_datasets(data, names or [])
    model = load_student(checkpoint, map_location="cpu").to(dev)
    if echo:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        typer.echo(
            f"{checkpoint}: student {model.charset.describe()}, {params:.1f} M params; "
            f"{len(found)} test set(s) under {data}; device {dev}, batch {batch_size}"
        )
    charsets = (protocol_charset(model.charset), *([extra] if extra else []))
    report = evaluate(
        model,
        found,
        batch_size=batch_size,
        charsets=tuple(dict.fromkeys(charsets)),
        limit=limit,
        progress=echo and sys.stderr.isatty(),
        decoding=decoding,
    )
    timing = None
    if speed:
        torch.manual_seed(0)
        timing = measure_speed(model, first_images(found, batch_size).to(dev), batch_size)
    return Evaluation(report, timing, model.cfg.to_dict())


def evaluate_command(
    checkpoint: Annotated[Path, typer.Argument(help="Student checkpoint written by training.")],
    data: Annotated[
        Path,
        typer.Option(
            help="Folder searched recursively for test sets: LMDBs (folders with data.mdb) and "
            "image folders with a labels.tsv (relpath<TAB>label, as prepare --folder)."
        ),
    ],
    datasets: Annotated[
        list[str] | None,
        typer.Option(help="Only these datasets, e.g. IIIT5k (repeatable or comma-separated)."),
    ] = None,
    charset: Annotated[
        str | None,
        typer.Option(
            help="Also score under this charset: 94 (or 62) adds case/punctuation-sensitive "
            "accuracy beside the papers' 36-symbol protocol; a FILE (one symbol per line) or a "
            "string of symbols scores a custom alphabet (labels kept in Unicode, NFC). A student "
            "trained on a custom alphabet is scored under it by default."
        ),
    ] = None,
    average: Annotated[
        str,
        typer.Option(
            help="Headline average: 'sub' = IC13_857/IC15_1811 (7,248 samples, as the papers), "
            "'full' = IC13_1015/IC15_2077 (7,672)."
        ),
    ] = "sub",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 256,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda[:N]; default cuda when available.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures and model config as JSON.")
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(help="Write key, label, prediction, confidence, correct per sample (TSV)."),
    ] = None,
    grid: Annotated[
        Path | None, typer.Option(help="Write a PNG grid of images with prediction and label.")
    ] = None,
    grid_samples: Annotated[int, typer.Option(min=1, help="Images in the grid.")] = 24,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Read at most this many samples per LMDB.")
    ] = None,
    speed: Annotated[
        bool, typer.Option(help="Time ms/image at batch 1 and images/s at --batch-size.")
    ] = True,
    threads: ThreadsOption = None,
    decoding: Annotated[
        str,
        typer.Option(
            help="ar = the autoregressive decoder (the protocol); ctc = the student's auxiliary "
            "CTC head on its encoder tokens (students trained with ctc_weight > 0)."
        ),
    ] = "ar",
) -> None:
    """Evaluate a student on every test set under --data (benchmark LMDBs and labelled image
    folders) with PARSeq's test protocol."""
    if average not in ("sub", "full"):
        raise InputError(f"--average {average}: choose 'sub' or 'full'")
    names = [n for item in datasets or [] for n in item.split(",") if n]
    from clipocr.evaluate import report as rep

    result = run_evaluation(
        checkpoint, data, names=names, charset=charset, batch_size=batch_size, device=device,
        limit=limit, speed=speed, threads=threads, decoding=decoding,
    )  # fmt: skip
    report = result.report
    for cs in report.charsets:
        typer.echo(rep.table_text(report, cs, average))
    for note in rep.notes_text(report):
        typer.echo(f"note: {note}")
    if result.speed is not None:
        typer.echo(rep.speed_text(result.speed))
    if json_out is not None:
        data_json = rep.to_json(report, average, result.model_config, str(checkpoint), result.speed)
        rep.write_json(data_json, json_out)
        typer.echo(f"wrote {json_out}")
    if predictions is not None:
        count = rep.write_predictions(report, predictions)
        typer.echo(f"wrote {count} predictions to {predictions}")
    if grid is not None:
        count = rep.write_grid(report, grid, grid_samples)
        typer.echo(f"wrote a grid of {count} images to {grid}")


def main() -> None:
    """Console script `clipocr-eval`: the command alone."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(evaluate_command)
    run_app(app, "clipocr-eval")
