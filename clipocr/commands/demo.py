"""`clipocr demo` / `make demo`: the whole pipeline end to end on rendered words, offline, on CPU.

render (train/val/test LMDBs) → prepare (tar shards) → cache-teacher (the bundled char-level CLIP
trained by `teacher-pretrain`, or any open_clip model given) → train the plain baseline and the
distilled student with the same steps and seed → evaluate both with `clipocr-eval`, by their AR
decoder and their CTC head → time both on one thread, in turn → one table (`demo_report.py`).

Everything runs through the same library calls the CLI commands use; nothing is special-cased
for the demo except its sizes, which scale with `--scale`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clipocr.commands.demo_report import (
    SetFigures,
    comparison_table,
    figures_dict,
    set_figures,
    time_students,
)
from clipocr.commands.eval import run_evaluation
from clipocr.commands.train import validation
from clipocr.pipeline.errors import InputError
from clipocr.pipeline.threads import usable_cores

if TYPE_CHECKING:
    from clipocr.train_student.config import TrainConfig

REAL_TRAIN_SETS = ("IIIT5k_train_2000", "IC15_train_4468")


@dataclass
class DemoConfig:
    out: str = "demo_out"
    scale: float = 1.0
    train_words: int = 9000  # clean style
    hard_words: int = 4000  # hard style (stronger distortion), trained on beside the clean
    test_words: int = 500  # per rendered test set
    real_words: int = 500  # per real set, when --real-data is given
    # 2,300 × 32 = 73.6 k samples: ≈ 12 min for the distilled arm on one core (≈ 99 samples/s:
    # the whole-batch LCL Gram matrices cost as much as the student), ≈ 6 min for the baseline.
    steps: int = 2300
    batch_size: int = 32
    lr: float = 2e-2  # base lr; × batch/256 → 2.5e-3 peak for the demo's batch 32
    preset: str = "demo"  # mini's sizes + conv stem + CTC head + CTC-aligned decoder memory
    seed: int = 0  # training seed (both runs); the rendered data depend on data_seed only
    data_seed: int = 0
    workers: int = 1  # DataLoader workers when the runs train one after the other
    parallel: bool = True  # train both runs at once, one process and one core each
    augment: bool = False  # 13 k words seen ≈ 6 times: the budget is spent learning to read
    clip_model: str | None = None  # None = the bundled demo teacher
    clip_pretrained: str | None = None
    real_data: str | None = None

    def scaled(self, n: int) -> int:
        return max(8, int(round(n * self.scale)))


def _stage(name: str) -> None:
    typer.secho(f"\n== {name}", bold=True)


def _real_lmdbs(real_root: Path, data: Path, count: int, seed: int) -> list[Path]:
    """Convert a random subset of each real training split (folder + labels.tsv) to an LMDB."""
    import random

    from clipocr.pipeline.lmdb_io import LmdbWriter
    from clipocr.pipeline.sources import ImageFolderSource

    made = []
    for name in REAL_TRAIN_SETS:
        src = real_root / name
        if not src.is_dir():
            continue
        out = data / "test" / name
        if not out.exists():
            source = ImageFolderSource(src)
            entries = sorted(random.Random(seed).sample(source.entries, min(count, len(source))))
            with LmdbWriter(out) as writer:
                for _, rel, label in entries:
                    writer.add((src / rel).read_bytes(), label)
        made.append(out)
    return made


def render_once(path: Path, num: int, seed: int, style: str, charset: str = "36") -> Path:
    """Render `num` words of `style` into the LMDB `path` unless it exists (a rerun resumes)."""
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.synth import render_lmdb

    if not path.exists():
        render_lmdb(path, num=num, seed=seed, charset=Charset.from_name(charset), style=style)
    return path


def _train_config(
    cfg: DemoConfig, shards: Path, store: Path, val: Path, run: Path, distill: bool
) -> TrainConfig:
    from clipocr.train_student.config import TrainConfig

    steps = cfg.scaled(cfg.steps)
    return TrainConfig(
        shards=str(shards),
        teacher_store=str(store) if distill else None,
        distill=distill,
        out=str(run),
        preset=cfg.preset,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        max_steps=steps,
        workers=0 if cfg.parallel else cfg.workers,
        threads=1 if cfg.parallel else None,
        augment=cfg.augment,
        seed=cfg.seed,
        val=[str(val)],
        # five validations and two checkpoints per run, at any scale (rounded up: a tiny run
        # of 9 steps validates 5 times, not 9)
        val_every=max(-(-steps // 5), 1),
        ckpt_every=max(-(-steps // 2), 1),
        log_every=max(steps // 100, 1),
        progress=not cfg.parallel,
    )


def _last_step(run: Path) -> int:
    """The last logged step of a run (its history grows as it trains)."""
    try:
        lines = (run / "history.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def _train_in_parallel(runs: list[TrainConfig]) -> None:
    """Train each run in its own `clipocr train` process pinned to its own core.

    On a 2-core machine two single-threaded runs side by side finish in about the time of one
    run with both cores, because a small student's step does not scale past one thread. Each
    process logs to RUN/train.log; the bar follows their history files.
    """
    import contextlib
    import os
    import subprocess
    import sys

    from tqdm import tqdm

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    procs = []
    for i, run_cfg in enumerate(runs):
        run = Path(run_cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        config_file = run / "demo-train.json"
        config_file.write_text(json.dumps(run_cfg.to_dict(), indent=2) + "\n")
        cmd = [sys.executable, "-m", "clipocr", "train", "--config", str(config_file)]
        if (run / "config.json").exists():
            cmd.append("--resume")
        log = open(run / "train.log", "ab")  # closed below, once the process has ended
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if cores:  # pinned from here, not by a preexec_fn: that runs Python between fork and
            # exec, unsafe in a process with threads (the cache stage leaves some) and where a
            # garbage collection runs the parent's finalizers in the child
            with contextlib.suppress(ProcessLookupError):  # (it may have failed already)
                os.sched_setaffinity(proc.pid, {cores[i % len(cores)]})
        procs.append((run, log, proc))
    total = sum(r.max_steps or 0 for r in runs)
    with tqdm(total=total, desc="train (both runs)", unit="step") as bar:
        while any(p.poll() is None for _, _, p in procs):
            time.sleep(0.5)
            bar.n = sum(_last_step(run) for run, _, _ in procs)
            bar.refresh()
    failed = []
    for run, log, proc in procs:
        log.close()
        if proc.returncode != 0:
            tail = (run / "train.log").read_text(errors="replace").strip().splitlines()[-5:]
            failed.append(f"{run} (exit {proc.returncode}): " + " | ".join(tail))
    if failed:
        raise InputError("training failed: " + "; ".join(failed))


def train_runs(runs: list[TrainConfig], parallel: bool) -> list[Path]:
    """Train the runs not yet finished (each resumes if it started before); return the models."""
    from clipocr.train_student.trainer import STUDENT_NAME, Trainer

    models = [Path(r.out) / STUDENT_NAME for r in runs]
    pending = [r for r, m in zip(runs, models, strict=True) if not m.exists()]
    for r in runs:
        if r not in pending:
            typer.echo(f"{r.out}: already trained, kept")
    if parallel and len(pending) > 1:
        _train_in_parallel(pending)
    else:
        for r in pending:
            resume = (Path(r.out) / "config.json").exists()
            Trainer(r, resume=resume, validate=validation(r.val)).run()
    return models


def _evaluate(
    checkpoint: Path, test_root: Path, out_json: Path, grid: Path | None
) -> dict[str, SetFigures]:
    """`clipocr-eval`'s job as a function call, read by both heads (AR, the protocol, and the CTC
    head where the student has one); the JSONs (``NAME.json``, ``NAME_ctc.json``) and the grid
    are kept as artefacts. No timing here: `time_students` times the arms on purpose."""
    from clipocr.evaluate import report as rep

    reports = {}
    for decoding in ("ar", "ctc"):
        result = run_evaluation(
            checkpoint, test_root, batch_size=64, device="cpu", echo=False, speed=False,
            decoding=decoding,
        )  # fmt: skip
        reports[decoding] = result.report
        path = out_json if decoding == "ar" else out_json.with_name(f"{out_json.stem}_ctc.json")
        rep.write_json(rep.to_json(result.report, "sub", result.model_config, str(checkpoint),
                                   None), path)  # fmt: skip
        if not result.model_config.get("ctc_weight"):
            break  # no CTC head to read with
    if grid is not None:
        rep.write_grid(reports["ar"], grid)
    return set_figures(reports["ar"], reports.get("ctc"))


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage (each skipped when its output exists, so a rerun resumes); return summary."""
    from clipocr.cache_teacher.orchestrate import CacheJob, run_cache
    from clipocr.cache_teacher.runner import RunnerConfig
    from clipocr.cache_teacher.teacher import DEFAULT_DEMO_TEACHER, TeacherConfig
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.shards import prepare_shards

    out = Path(cfg.out)
    data = out / "data"
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    tic = time.perf_counter()
    if cfg.clip_model is None:
        teacher = DEFAULT_DEMO_TEACHER
        teacher_text = (
            "bundled demo teacher: a small character-level CLIP trained on rendered words by "
            f"`clipocr teacher-pretrain` ({teacher.model})"
        )
    else:
        teacher = TeacherConfig(model=cfg.clip_model, pretrained=cfg.clip_pretrained)
        teacher_text = f"open_clip {cfg.clip_model} with weights {cfg.clip_pretrained}"
    typer.secho(f"teacher: {teacher_text}", fg="cyan")

    _stage("1/5 render words (train, val, test sets)")
    render_once(data / "train", cfg.scaled(cfg.train_words), cfg.data_seed + 1, "clean")
    render_once(data / "train_hard", cfg.scaled(cfg.hard_words), cfg.data_seed + 11, "hard")
    render_once(data / "val", cfg.scaled(cfg.test_words) // 2, cfg.data_seed + 2, "clean")
    render_once(
        data / "test" / "synth_clean", cfg.scaled(cfg.test_words), cfg.data_seed + 3, "clean"
    )
    render_once(data / "test" / "synth_hard", cfg.scaled(cfg.test_words), cfg.data_seed + 4, "hard")
    if cfg.real_data:
        real = _real_lmdbs(Path(cfg.real_data), data, cfg.scaled(cfg.real_words), cfg.data_seed)
        typer.echo(f"real test sets: {', '.join(p.name for p in real) or 'none found'}")

    _stage("2/5 prepare tar shards")
    shards = data / "shards"
    if not (shards / "shards.json").exists():
        sources = [data / "train", data / "train_hard"]
        prepare_shards(sources, shards, Charset.from_name("36"), shard_size=2000)

    _stage("3/5 cache the teacher's stage features (once)")
    store = out / "teacher_store"
    job = CacheJob(str(shards), str(store), teacher, RunnerConfig(batch_size=128, workers=1))
    run_cache(job, dask_workers=1, processes=False)

    runs = out / "runs" / f"seed{cfg.seed}"
    parallel = cfg.parallel and usable_cores() >= 2
    _stage(
        "4/5 train the plain baseline (--no-distill) and the distilled student (same steps, seed)"
        + (", side by side on one core each" if parallel else "")
    )
    baseline, distilled = train_runs(
        [
            _train_config(cfg, shards, store, data / "val", runs / "baseline", distill=False),
            _train_config(cfg, shards, store, data / "val", runs / "distilled", distill=True),
        ],
        parallel,
    )

    _stage("5/5 evaluate both with clipocr-eval (AR and CTC heads), then time them")
    reports = out / "eval" / f"seed{cfg.seed}"
    reports.mkdir(parents=True, exist_ok=True)
    figures = {
        "baseline": _evaluate(baseline, data / "test", reports / "baseline.json", None),
        "distilled": _evaluate(
            distilled, data / "test", reports / "distilled.json", reports / "distilled_grid.png"
        ),  # fmt: skip
    }
    timing = time_students({"baseline": baseline, "distilled": distilled}, data / "test")
    table = comparison_table(figures) + "\n" + timing.line()
    minutes = (time.perf_counter() - tic) / 60
    typer.secho("\n== distillation gain (word accuracy %, 36-symbol protocol)", bold=True)
    typer.echo(table)
    typer.echo(f"\nteacher: {teacher_text}")
    typer.echo(
        f"student preset {cfg.preset}, {cfg.scaled(cfg.steps)} steps × batch {cfg.batch_size}, "
        f"seed {cfg.seed}; {cfg.scaled(cfg.train_words)} clean + {cfg.scaled(cfg.hard_words)} "
        "hard rendered training words; "
        f"{minutes:.1f} min"
    )
    artefacts = {
        "data": str(data),
        "shards": str(shards),
        "teacher_store": str(store),
        "baseline": str(baseline),
        "distilled": str(distilled),
        "curves": [str(runs / "baseline" / "curves.png"), str(runs / "distilled" / "curves.png")],
        "eval": str(reports),
        "grid": str(reports / "distilled_grid.png"),
    }
    typer.echo("artefacts:\n" + "\n".join(f"  {k:<14}{v}" for k, v in artefacts.items()))
    summary = {"teacher": teacher_text, "config": asdict(cfg), "table": table,
               "figures": figures_dict(figures), "timing": asdict(timing),
               "minutes": minutes, "artefacts": artefacts}  # fmt: skip
    (out / f"summary-seed{cfg.seed}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for every artefact of the demo.")] = Path(
        "demo_out"
    ),
    scale: Annotated[
        float, typer.Option(help="Multiplies word counts and steps (DEMO_SCALE in make demo).")
    ] = 1.0,
    seed: Annotated[
        int, typer.Option(help="Training seed of both runs (another seed reuses the data).")
    ] = 0,
    steps: Annotated[
        int | None, typer.Option(help="Training steps per run at scale 1 [default: the recipe's].")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Student size [default: the demo's CPU-sized preset].")
    ] = None,
    clip_model: Annotated[
        str | None, typer.Option(help="Use this open_clip model instead of the bundled teacher.")
    ] = None,
    clip_pretrained: Annotated[
        str | None, typer.Option(help="Local weights for --clip-model.")
    ] = None,
    real_data: Annotated[
        Path | None,
        typer.Option(help="Folder with real word crops (IIIT5k_train_2000/, IC15_train_4468/)."),
    ] = None,
    parallel: Annotated[
        bool,
        typer.Option(
            "--parallel/--sequential",
            help="Train both students at once, one process and one core each (needs 2 cores).",
        ),
    ] = True,
) -> None:
    """Run the whole pipeline on rendered words and print baseline vs distilled accuracy.

    Offline and CPU-only by default: the teacher is the small char-level CLIP bundled with
    clipocr. Rerunning with the same --out resumes, skipping finished stages.
    """
    given = {"steps": steps, "preset": preset}
    cfg = DemoConfig(
        out=str(out), scale=scale, seed=seed, clip_model=clip_model, parallel=parallel,
        clip_pretrained=clip_pretrained, real_data=str(real_data) if real_data else None,
        **{k: v for k, v in given.items() if v is not None},
    )  # fmt: skip
    run_demo(cfg)
