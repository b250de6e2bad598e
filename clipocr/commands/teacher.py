"""`clipocr cache-teacher` and `clipocr teacher-pretrain` (the only commands that load CLIP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from clipocr.commands.common import CHARSET_HELP, ThreadsOption

_TEACHER = "Teacher"
_RUN = "Run"


def cache_teacher(
    shards: Annotated[
        Path | None, typer.Option(help="Folder of prepared tar shards (with shards.json).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Teacher store to create or complete (path or fsspec URL).")
    ] = None,
    clip_model: Annotated[
        str,
        typer.Option(
            help="open_clip model name (ViT-B-16 …) or a clipocr teacher config JSON "
            "(e.g. the bundled demo teacher).",
            rich_help_panel=_TEACHER,
        ),
    ] = "ViT-B-16",
    clip_pretrained: Annotated[
        str | None,
        typer.Option(
            help="Local weights file (.safetensors/.pt) or an open_clip tag (downloads; needs "
            "network). Without it the teacher is randomly initialised (for speed tests only).",
            rich_help_panel=_TEACHER,
        ),
    ] = None,
    pos_embed: Annotated[
        str,
        typer.Option(help="crop (official code) or interpolate.", rich_help_panel=_TEACHER),
    ] = "crop",
    form: Annotated[
        str,
        typer.Option(help="normalised (default) or raw feature storage.", rich_help_panel=_TEACHER),
    ] = "normalised",
    codec: Annotated[
        str,
        typer.Option(
            help="zstd (lossless fp16), bitround-K, intB-token, intB-channel (lossy).",
            rich_help_panel=_TEACHER,
        ),
    ] = "zstd",
    text_layout: Annotated[
        str,
        typer.Option(
            help="table: text features once per distinct label, samples refer to them; ragged: "
            "once per sample in its shard group.",
            rich_help_panel=_TEACHER,
        ),
    ] = "table",
    text_pad: Annotated[
        str,
        typer.Option(
            help="masked: decoder positions past EOS are left out of the text loss; align: "
            "they are aligned with CLIP's pad-token features, as the official code does "
            "(needs --text-layout table; training follows the store).",
            rich_help_panel=_TEACHER,
        ),
    ] = "masked",
    views: Annotated[
        int,
        typer.Option(
            help="Cached views per sample: 1 = the clean image (as before); K > 1 adds K-1 "
            "augmentations of it (the trainer's own, seeded per key and view), so a student "
            "trained with augmentation gets the teacher's targets of the very pixels it sees. "
            "Costs K times the image tower and the image-tap bytes.",
            rich_help_panel=_TEACHER,
        ),
    ] = 1,
    device: Annotated[
        str,
        typer.Option(help="auto (each worker's GPU, else CPU), cuda, cpu.", rich_help_panel=_RUN),
    ] = "auto",
    batch_size: Annotated[int, typer.Option(rich_help_panel=_RUN)] = 256,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on GPU), bf16, fp16, fp32.", rich_help_panel=_RUN)
    ] = "auto",
    workers: Annotated[
        int, typer.Option(help="Image-decoding DataLoader workers per task.", rich_help_panel=_RUN)
    ] = 4,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Address of a running dask scheduler (tcp://…).", rich_help_panel=_RUN),
    ] = None,
    dask_workers: Annotated[
        int | None,
        typer.Option(help="Local cluster size (default: one per GPU, or 1).", rich_help_panel=_RUN),
    ] = None,
    dask_processes: Annotated[
        bool,
        typer.Option(
            "--dask-processes/--dask-threads",
            help="Local cluster workers as processes (default) or threads of this process.",
            rich_help_panel=_RUN,
        ),
    ] = True,
    threads: ThreadsOption = None,
    verify: Annotated[
        Path | None,
        typer.Option(help="Only verify this store (with --shards: against shards.json)."),
    ] = None,
) -> None:
    """Run the frozen CLIP teacher once over every shard and cache its stage features.

    One dask task per shard; finished shards are skipped, so rerunning after a kill resumes.
    With --verify STORE, checks completeness, counts, key alignment, every chunk (present, its
    checksum, NaN/Inf) and, with --shards, that the store was cached from those shard files
    (their SHA-256) instead, and reports bytes/sample.
    """
    from clipocr.pipeline.errors import InputError

    if verify is not None:
        _verify(verify, shards)
        return
    if shards is None or out is None:
        raise InputError("cache-teacher: --shards and --out are required (or --verify STORE)")
    from dataclasses import asdict

    from clipocr.cache_teacher.orchestrate import CacheJob, run_cache
    from clipocr.cache_teacher.runner import RunnerConfig
    from clipocr.cache_teacher.teacher import TeacherConfig
    from clipocr.pipeline.shards import load_index
    from clipocr.pipeline.teacher_store import TEXT_LAYOUTS, TEXT_PADS, parse_codec

    parse_codec(codec)
    if text_layout not in TEXT_LAYOUTS or text_pad not in TEXT_PADS:
        raise InputError(
            f"cache-teacher: --text-layout {text_layout} / --text-pad {text_pad}: expected one of "
            f"{', '.join(TEXT_LAYOUTS)} / {', '.join(TEXT_PADS)}"
        )
    if text_pad == "align" and text_layout != "table":
        raise InputError("cache-teacher: --text-pad align needs --text-layout table")
    charset = load_index(shards)["charset"]
    job = CacheJob(
        shards=str(shards),
        out=str(out),
        teacher=TeacherConfig(
            model=clip_model, pretrained=clip_pretrained, pos_embed=pos_embed, charset=charset,
            form=form,
        ),
        runner=RunnerConfig(batch_size, workers, precision, codec),
        device=device,
        threads=threads,
        text_layout=text_layout,
        text_pad=text_pad,
        views=views,
    )  # fmt: skip
    from clipocr.cache_teacher.cluster import sigterm_interrupts
    from clipocr.pipeline.errors import RunInterrupted

    try:
        with sigterm_interrupts():  # `kill PID` stops the run as Ctrl-C does, in one line
            summary = run_cache(
                job, scheduler=scheduler, dask_workers=dask_workers, processes=dask_processes
            )
    except KeyboardInterrupt:  # before the cluster was up (it says more once it is)
        raise RunInterrupted(
            f"{out}: interrupted; finished shards are kept: rerun the same command to resume"
        ) from None
    if "://" not in str(out):
        (Path(out) / "cache-config.json").write_text(json.dumps(asdict(job), indent=2) + "\n")
    typer.echo(
        f"cached {summary.samples} samples from {len(summary.done)} shard(s) into {out} "
        f"({summary.already_done} already done, {summary.missing} undecodable recorded as missing)"
    )
    if summary.failed:
        for shard, err in summary.failed.items():
            typer.secho(f"failed: {shard}: {err}", err=True, fg="red")
        raise typer.Exit(1)


def _verify(store_path: Path, shards: Path | None) -> None:
    from clipocr.pipeline.shards import load_index
    from clipocr.pipeline.teacher_store import TeacherStore, format_verify_report

    index = load_index(shards) if shards is not None else None
    report = TeacherStore(store_path).verify(index, shards)
    typer.echo(format_verify_report(report))
    if not report["ok"]:
        raise typer.Exit(1)


def teacher_pretrain(
    data: Annotated[
        list[Path] | None, typer.Option(help="LMDB of rendered training words (repeatable).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the teacher config, weights, history.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="JSON file of PretrainConfig values (e.g. a run's pretrain_args.json); flags "
            "override it."
        ),
    ] = None,
    val: Annotated[
        Path | None, typer.Option(help="LMDB of held-out words for retrieval accuracy.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Step budget (reproducible).")] = None,
    minutes: Annotated[float | None, typer.Option(help="Wall-time budget.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[default: 128]")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak lr. [default: 1e-3]")] = None,
    warmup: Annotated[int | None, typer.Option(help="Linear warm-up steps. [default: 200]")] = None,
    ctc_weight: Annotated[
        float | None,
        typer.Option(help="Weight of the auxiliary per-character CTC loss (0 = off). [default: 1]"),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed. [default: 0]")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads. [default: 1]")] = None,
    charset: Annotated[str | None, typer.Option(help=CHARSET_HELP)] = None,
) -> None:
    """Train a small character-level CLIP on rendered words: a real teacher for offline demos.

    Saves an open_clip model config + tokenizer (teacher.json) and weights
    (teacher.safetensors) that `cache-teacher --clip-model OUT/teacher.json --clip-pretrained
    OUT/teacher.safetensors` loads like any open_clip model, plus history and retrieval accuracy.
    """
    given = dict(locals())
    given.pop("config")
    from clipocr.cache_teacher.pretrain import PretrainConfig, pretrain

    given["command"] = _command_line("teacher-pretrain", given, config)
    result = pretrain(PretrainConfig.from_sources(config, given))
    typer.echo(json.dumps(result.to_dict(), indent=2, default=str))


def _command_line(name: str, given: dict, config: Path | None) -> str:
    """The command as the flags that were given (recorded in TEACHER.md), rebuilt from the
    parsed values rather than `sys.argv`, which is not the command's when it runs in-process."""
    import shlex

    words = ["clipocr", name] + (["--config", str(config)] if config else [])
    for key, value in given.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                words += [f"--{key.replace('_', '-')}", str(item)]
    return shlex.join(words)
