"""The reference run (issues 13, 20): baseline vs distilled on rendered words + real crops.

    .venv/bin/python bench/reference.py                       # ≈ 1.5 h on the 2-core CPU, resumable
    .venv/bin/python bench/reference.py --samples 100000 --seeds 0 1   # reduced budget, 2 seeds
    python3 bench/reference.py --device cuda --preset small --samples 5000000 --batch-size 256
    # issue 20's shipped student: fine-tune the bundled one on the new renderer's words and the
    # real crops (×4), augmentation on, the best of 3 checkpoints by a separate validation part
    .venv/bin/python bench/reference.py --out ~/ref2 --words 40000 --samples 150000 --augment \
        --init-from bundled --select 200 --real-repeat 4 --keep-best 3 --lr 1e-2

Data: `--words` rendered training words (70 % clean, 30 % hard styles) plus the real training
crops of `--real-data` (IIIT5k_train_2000, IC15_train_4468) split by one seeded shuffle into a
test part (`--held-back`, default 500 per set: never trained on, never used to choose anything,
the same crops in every run), an optional validation part (`--select` per set, with as many
rendered clean words: what `--keep-best` chooses the exported checkpoint by) and the training
rest (repeated `--real-repeat` times in the shards); one store of the bundled teacher's
features. Both arms train with the same data, steps and seed — side by side on one core each on a
CPU, one after the other on a GPU — with validation every `--val-every` steps. Every figure is
read on the test part, by the AR decoder and by the CTC head. Every stage is skipped when its
output exists and training resumes, so rerunning the same command continues an interrupted run.
Writes OUT/reference-SAMPLES.json (figures per seed and arm), OUT/reference-SAMPLES.md (the
table), a curves plot (validation word accuracy vs samples seen, both arms) to `--curves`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from clipocr.commands.demo import DemoConfig

REAL_SETS = ("IIIT5k_train_2000", "IC15_train_4468")


@dataclass
class Arm:
    seed: int
    name: str  # baseline | distilled
    run: str
    accuracy: dict[str, float]  # test set → word accuracy %
    one_minus_ned: dict[str, float]
    ctc_accuracy: dict[str, float]  # the same sets read by the auxiliary CTC head, where present


def _split_real(real_root: Path, data: Path, held_back: int, select: int, seed: int) -> list[Path]:
    """Each real split as three LMDBs from one seeded shuffle: `test/NAME` (the first
    `held_back` crops: never trained on, never used to choose a checkpoint — the same crops as
    every earlier reference run's held-back part), `val/NAME` (the next `select` crops: what
    `--keep-best` chooses checkpoints by) and `train/NAME` (the rest)."""
    from clipocr.pipeline.lmdb_io import LmdbWriter
    from clipocr.pipeline.sources import ImageFolderSource

    train_parts = []
    for name in REAL_SETS:
        src = real_root / name
        if not src.is_dir():
            print(f"note: {src} not found; training without it")
            continue
        entries = list(ImageFolderSource(src).entries)
        random.Random(seed).shuffle(entries)
        cut = held_back + select
        parts = {"test": entries[:held_back], "val": entries[held_back:cut], "train": entries[cut:]}
        for part, chosen in parts.items():
            out = data / part / name
            if chosen and not out.exists():
                with LmdbWriter(out) as writer:
                    for _, rel, label in sorted(chosen):
                        writer.add((src / rel).read_bytes(), label)
        train_parts.append(data / "train" / name)
    return train_parts


def _mean(values: list[float]) -> str:
    """The mean to one decimal, or a dash for an arm this run did not train (``--arms``)."""
    return f"{statistics.mean(values):.1f}" if values else "–"


def _mean_ctc(arms: list[Arm], arm: str, name: str) -> str:
    return _mean([a.ctc_accuracy[name] for a in arms if a.name == arm and name in a.ctc_accuracy])


def _plot(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in sorted(curves.items()):
        if points:
            xs, ys = zip(*points)
            style = "-" if "distilled" in label else "--"
            ax.plot(xs, ys, style, label=label)
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("word accuracy %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves(run: Path, batch: int, arm: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "history.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key.startswith("val_acc/"):
                out.setdefault(f"{arm} {key[8:]}", []).append((record["step"] * batch, value))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path.home() / "clipocr-reference")
    parser.add_argument("--words", type=int, default=200_000)
    # 450 k samples: ≈ 76 min for the distilled arm on one core (≈ 99 samples/s), ≈ 32 min for
    # the baseline beside it, after ≈ 15 min of rendering and caching.
    parser.add_argument("--samples", type=int, default=450_000, help="training budget per arm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=DemoConfig.lr, help="base lr (× batch/256)")
    parser.add_argument(
        "--augment", action="store_true", help="PARSeq's RandAugment (off: ≈ 2 epochs)"
    )
    parser.add_argument("--preset", default="demo")
    parser.add_argument(
        "--charset", default="36", help="36, 62 or 94 (a plain arm only: the teacher reads 36)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--real-data", type=Path, default=Path("../shared/data/real-train"))
    parser.add_argument("--held-back", type=int, default=500, help="real test crops per set")
    parser.add_argument(
        "--select", type=int, default=0, help="real crops per set held back to choose checkpoints"
    )
    parser.add_argument(
        "--real-repeat", type=int, default=1, help="times each real training crop is in the shards"
    )
    parser.add_argument("--init-from", help="start both arms from this student (or 'bundled')")
    parser.add_argument(
        "--keep-best", type=int, default=0, help="export the best of K by validation (0: last)"
    )
    parser.add_argument("--val-every", type=int, default=None, help="steps (default: 20 points)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--views", type=int, default=1, help="teacher views per sample (2+ with --augment)"
    )
    parser.add_argument(
        "--arms", nargs="+", default=["baseline", "distilled"], choices=["baseline", "distilled"]
    )
    parser.add_argument("--curves", type=Path, default=Path("docs/reference_curves.png"))
    args = parser.parse_args()

    from clipocr.cache_teacher.orchestrate import CacheJob, run_cache
    from clipocr.cache_teacher.runner import RunnerConfig
    from clipocr.cache_teacher.teacher import DEFAULT_DEMO_TEACHER
    from clipocr.commands.demo import render_once, train_runs
    from clipocr.commands.eval import run_evaluation
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.errors import InputError
    from clipocr.pipeline.shards import prepare_shards
    from clipocr.pipeline.threads import usable_cores
    from clipocr.train_student.config import TrainConfig

    if args.charset != "36" and "distilled" in args.arms:
        raise SystemExit(f"--charset {args.charset}: the teacher reads 36 symbols; --arms baseline")
    out, data = args.out, args.out / "data"
    clean = round(args.words * 0.7)
    train_sets = [
        render_once(data / "train" / "synth_clean", clean, 101, "clean", args.charset),
        render_once(data / "train" / "synth_hard", args.words - clean, 102, "hard", args.charset),
    ]
    real_train = _split_real(args.real_data, data, args.held_back, args.select, seed=0)
    for copy in range(args.real_repeat):  # an LMDB opens once per process: repeats are copies
        for part in real_train:
            repeat = part.with_name(f"{part.name}.repeat{copy}") if copy else part
            if not repeat.exists():
                shutil.copytree(part, repeat)
            train_sets.append(repeat)
    render_once(data / "test" / "synth_clean", 500, 103, "clean", args.charset)
    if args.select:
        render_once(data / "val" / "synth_clean", args.select, 104, "clean", args.charset)
    shards = data / "shards"
    if not (shards / "shards.json").exists():
        prepare_shards(train_sets, shards, Charset.from_name(args.charset), shard_size=5000)
    store = out / ("teacher_store" if args.views == 1 else f"teacher_store_k{args.views}")
    if "distilled" in args.arms:  # a baseline-only run needs no teacher
        runner = RunnerConfig(batch_size=256)
        job = CacheJob(str(shards), str(store), DEFAULT_DEMO_TEACHER, runner, device=args.device,
                       views=args.views)  # fmt: skip
        cached = run_cache(job, dask_workers=1, processes=False)
        if cached.failed:
            raise SystemExit(f"caching failed: {cached.failed}")

    steps = max(args.samples // args.batch_size, 1)
    val_every = args.val_every or max(steps // 20, 1)
    # Checkpoints are chosen on `val` (when --select gives one); every figure is read on `test`.
    val_root = data / ("val" if args.select else "test")
    vals = sorted(str(p) for p in val_root.iterdir())
    cpu = args.device == "cpu"
    parallel = cpu and usable_cores() >= 2  # on one core (taskset): one arm after the other
    arms: list[Arm] = []
    curves: dict[str, list[tuple[int, float]]] = {}
    for seed in args.seeds:
        runs = []
        for arm in args.arms:
            runs.append(
                TrainConfig(
                    shards=str(shards),
                    teacher_store=str(store) if arm == "distilled" else None,
                    distill=arm == "distilled",
                    out=str(out / "runs" / f"{args.samples}-seed{seed}" / arm),
                    preset=args.preset,
                    charset=args.charset,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    augment=args.augment,
                    init_from=args.init_from,
                    keep_best=args.keep_best,
                    export="best" if args.keep_best else "last",
                    max_steps=steps,
                    seed=seed,
                    device=args.device,
                    val=vals,
                    val_every=val_every,
                    ckpt_every=val_every,
                    log_every=max(val_every // 10, 1),
                    workers=0 if cpu else 2,  # on a CPU a worker only takes turns with the math
                    threads=1 if cpu else None,
                    progress=not parallel,
                )  # fmt: skip
            )
        for run_cfg, model in zip(runs, train_runs(runs, parallel), strict=True):
            arm = "distilled" if run_cfg.distill else "baseline"
            heads = {}
            for decoding in ("ar", "ctc"):  # the baseline's best head is reported too
                try:
                    heads[decoding] = run_evaluation(model, data / "test", device=args.device,
                                                     speed=False, echo=False,
                                                     decoding=decoding).report.rows  # fmt: skip
                except InputError:  # a student without a CTC head
                    continue
            rows = heads["ar"]
            arms.append(Arm(seed, arm, run_cfg.out, {r.name: r.accuracy for r in rows},
                            {r.name: r.one_minus_ned for r in rows},
                            {r.name: r.accuracy for r in heads.get("ctc", [])}))  # fmt: skip
            if seed == args.seeds[0]:
                curves.update(_curves(Path(run_cfg.out), args.batch_size, arm))

    names = sorted(arms[0].accuracy)
    lines = [
        f"reference run: {args.words} rendered words + real crops, {args.samples} samples per arm, "
        f"preset {args.preset}, batch {args.batch_size}, seeds {args.seeds}, device {args.device}",
        "",
        "| test set (held back) | baseline | distilled | gain | CTC head: baseline / distilled |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        base = [a.accuracy[name] for a in arms if a.name == "baseline"]
        dist = [a.accuracy[name] for a in arms if a.name == "distilled"]
        gains = [d - b for d, b in zip(dist, base, strict=True)] if base and dist else []
        spread = f" ± {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
        gain = f"{statistics.mean(gains):+.1f}{spread}" if gains else "–"
        lines.append(
            f"| {name} | {_mean(base)} | {_mean(dist)} | {gain} | "
            f"{_mean_ctc(arms, 'baseline', name)} / {_mean_ctc(arms, 'distilled', name)} |"
        )
    table = "\n".join(lines)
    print(table)
    stem = out / f"reference-{args.samples}"
    stem.with_suffix(".md").write_text(table + "\n")
    stem.with_suffix(".json").write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "arms": [asdict(a) for a in arms]},
            indent=2,
        )
        + "\n"  # fmt: skip
    )
    _plot(curves, args.curves, f"reference run, seed {args.seeds[0]}: held-back word accuracy")
    print(f"wrote {stem}.md, {stem}.json, {args.curves}")


if __name__ == "__main__":
    main()
