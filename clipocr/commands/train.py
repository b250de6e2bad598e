"""`clipocr train`: distil a student from cached teacher targets (CLIP is never loaded)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clipocr.commands.common import CHARSET_HELP, ThreadsOption

if TYPE_CHECKING:
    import torch

    from clipocr.train_student.model import Student

_DATA = "Data"
_OPT = "Optimisation"
_DIST = "Distillation"
_RUN = "Run"


def validation(paths: list[str]) -> Callable[[Student, torch.device], dict[str, float]]:
    """The trainer's validation: `clipocr-eval`'s own `evaluate` on the given LMDBs, so training
    curves and benchmark figures can never disagree (the trainer itself never imports evaluate).
    Each LMDB is opened now, so a missing or broken one is an error before training, not after."""
    from clipocr.pipeline.lmdb_io import LmdbReader

    for path in paths:
        LmdbReader(path).close()

    def validate(student: Student, device: torch.device) -> dict[str, float]:
        from clipocr.evaluate import evaluate

        report = evaluate(student, paths, device=device, progress=False)
        out = {f"val_acc/{row.name}": row.accuracy for row in report.rows}
        if student.ctc_head is not None:  # does the encoder read where the decoder does not?
            ctc = evaluate(student, paths, device=device, decoding="ctc")
            out.update({f"val_ctc_acc/{row.name}": row.accuracy for row in ctc.rows})
        return out

    return validate


def train(
    shards: Annotated[
        Path | None, typer.Option(help="Folder of prepared tar shards.", rich_help_panel=_DATA)
    ] = None,
    teacher_store: Annotated[
        Path | None,
        typer.Option(help="Teacher store made by cache-teacher.", rich_help_panel=_DATA),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (checkpoints, config, curves).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="JSON file of TrainConfig values; flags override it.", rich_help_panel=_RUN
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Student size: test, tiny, mini, demo, small (paper), base. With --init-from: "
            "the checkpoint's (leave it out)."
        ),
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            help="Start from a trained student: a student.safetensors, or 'bundled' (the "
            "packaged one). Its architecture is kept; a new --charset re-initialises the output "
            "rows of symbols it never read; distillation heads start fresh. Recorded in "
            "config.json and RUN/init_from.json.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    charset: Annotated[str | None, typer.Option(help=CHARSET_HELP, rich_help_panel=_DATA)] = None,
    distill: Annotated[
        bool | None,
        typer.Option(
            "--distill/--no-distill",
            help="--no-distill trains the plain baseline (no store needed).",
            rich_help_panel=_DIST,
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(rich_help_panel=_OPT)] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Base lr, scaled by sqrt(GPUs)·batch/256.", rich_help_panel=_OPT),
    ] = None,
    epochs: Annotated[int | None, typer.Option(rich_help_panel=_OPT)] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Step budget (overrides --epochs).", rich_help_panel=_OPT)
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32.", rich_help_panel=_OPT
        ),
    ] = None,
    loss_type: Annotated[
        str | None, typer.Option(help="lcl (paper) or l1 (ablation).", rich_help_panel=_DIST)
    ] = None,
    use_image: Annotated[
        bool | None,
        typer.Option("--image-guidance/--no-image-guidance", rich_help_panel=_DIST),
    ] = None,
    use_text: Annotated[
        bool | None, typer.Option("--text-guidance/--no-text-guidance", rich_help_panel=_DIST)
    ] = None,
    use_gam: Annotated[bool | None, typer.Option("--gam/--no-gam", rich_help_panel=_DIST)] = None,
    workers: Annotated[
        int | None, typer.Option(help="DataLoader worker processes.", rich_help_panel=_DATA)
    ] = None,
    threads: ThreadsOption = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            help="PARSeq's RandAugment on the student's images. Default: on for a plain run and "
            "for a teacher store cached with --views K ≥ 2 (the views replay what the teacher "
            "saw), off when distilling from a 1-view store (clean-image targets; measured far "
            "worse than no augmentation, BENCHMARKS 'Cached views').",
            rich_help_panel=_DATA,
        ),
    ] = None,
    augment_on: Annotated[
        str | None,
        typer.Option(
            help="host (PIL, per image, in the DataLoader workers) or device (the same ops, "
            "batched on the training device: frees a GPU trainer's host cores; cached views "
            "replay on host only).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    allow_view_drift: Annotated[
        bool | None,
        typer.Option(
            "--allow-view-drift/--refuse-view-drift",
            help="Train on a teacher store with cached views (cache-teacher --views K) even if "
            "its views would not replay bit for bit here (other Pillow/timm/numpy versions or "
            "augmentation); the log says how many probe pixels differ. Refused by default.",
            rich_help_panel=_DATA,
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(rich_help_panel=_RUN)] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda, cuda:1 …", rich_help_panel=_RUN)
    ] = None,
    val: Annotated[
        list[Path] | None,
        typer.Option(help="Validation LMDB (repeatable).", rich_help_panel=_RUN),
    ] = None,
    val_every: Annotated[int | None, typer.Option(rich_help_panel=_RUN)] = None,
    ckpt_every: Annotated[int | None, typer.Option(rich_help_panel=_RUN)] = None,
    keep_best: Annotated[
        int | None,
        typer.Option(
            help="Also keep the K students of best mean validation word accuracy in RUN/best/ "
            "(listed in RUN/best.json); needs --val.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    export: Annotated[
        str | None,
        typer.Option(
            help="RUN/student.safetensors is the 'last' step's student or the 'best' kept "
            "(needs --keep-best); best.json says which.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    log: Annotated[
        str | None,
        typer.Option(
            help="'tensorboard': also log losses, lr, samples/s and validation accuracy to "
            "RUN/tensorboard/ (pip install 'clipocr\\[log]').",
            rich_help_panel=_RUN,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run in --out exactly where it stopped.", rich_help_panel=_RUN
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            help="If another train run is using --out, wait for it to end instead of stopping.",
            rich_help_panel=_RUN,
        ),
    ] = False,
) -> None:
    """Train a student from prepared shards, distilling from cached teacher targets.

    Writes RUN/config.json (resolved settings), RUN/history.jsonl, RUN/curves.png,
    RUN/checkpoints/step-N/ (student.safetensors + state.pt) and the exported inference model
    RUN/student.safetensors (the student alone). Multi-GPU: launch with `torchrun`. One run
    at a time owns RUN (a lock held while it trains; see --wait).
    """
    given = dict(locals())
    from clipocr.train_student.config import TrainConfig
    from clipocr.train_student.trainer import Trainer

    given["heads"] = {
        k: v
        for k in ("loss_type", "use_image", "use_text", "use_gam")
        if (v := given.pop(k)) is not None
    }
    for name in ("config", "resume", "wait"):
        given.pop(name)
    for name in ("shards", "teacher_store", "out"):
        if given[name] is not None:
            given[name] = str(given[name])
    if given["val"] is not None:
        given["val"] = [str(p) for p in given["val"]]
    cfg = TrainConfig.from_sources(config, given)
    final = Trainer(cfg, resume=resume, validate=validation(cfg.val), wait=wait).run()
    typer.echo(f"student exported to {final}")
