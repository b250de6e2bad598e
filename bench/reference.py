"""The reference run (issue 13): baseline vs distilled on ≥ 200 k rendered words + real crops.

    .venv/bin/python bench/reference.py                       # ≈ 1.5 h on the 2-core CPU, resumable
    .venv/bin/python bench/reference.py --samples 100000 --seeds 0 1   # reduced budget, 2 seeds
    python3 bench/reference.py --device cuda --preset small --samples 5000000 --batch-size 256

Data: `--words` rendered training words (70 % clean, 30 % hard styles) plus the real training
crops of `--real-data` (IIIT5k_train_2000, IC15_train_4468) less a held-back validation part of
each (`--held-back`, default 500 per set, never trained on), a rendered clean validation set, one
store of the bundled teacher's features. Both arms train with the same data, steps and seed —
side by side on one core each on a CPU, one after the other on a GPU — with validation on the
three held-back sets every `--val-every` steps. Every stage is skipped when its output exists and
training resumes, so rerunning the same command continues an interrupted run. Writes
OUT/reference-SAMPLES.json (figures per seed and arm), OUT/reference-SAMPLES.md (the table), a
curves plot (word accuracy vs samples seen, both arms, one plot) to `--curves`.
"""

from __future__ import annotations

import argparse
import json
import random
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


def _split_real(real_root: Path, data: Path, held_back: int, seed: int) -> list[Path]:
    """Each real split as two LMDBs: `train/NAME` and `val/NAME` (`held_back` samples)."""
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
        parts = {"val": entries[:held_back], "train": entries[held_back:]}
        for part, chosen in parts.items():
            out = data / part / name
            if not out.exists():
                with LmdbWriter(out) as writer:
                    for _, rel, label in sorted(chosen):
                        writer.add((src / rel).read_bytes(), label)
        train_parts.append(data / "train" / name)
    return train_parts


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--real-data", type=Path, default=Path("../shared/data/real-train"))
    parser.add_argument("--held-back", type=int, default=500)
    parser.add_argument("--val-every", type=int, default=None, help="steps (default: 20 points)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--curves", type=Path, default=Path("docs/reference_curves.png"))
    args = parser.parse_args()

    from clipocr.cache_teacher.orchestrate import CacheJob, run_cache
    from clipocr.cache_teacher.runner import RunnerConfig
    from clipocr.cache_teacher.teacher import DEFAULT_DEMO_TEACHER
    from clipocr.commands.demo import render_once, train_runs
    from clipocr.commands.eval import run_evaluation
    from clipocr.pipeline.charset import Charset
    from clipocr.pipeline.shards import prepare_shards
    from clipocr.pipeline.threads import usable_cores
    from clipocr.train_student.config import TrainConfig

    out, data = args.out, args.out / "data"
    clean = round(args.words * 0.7)
    train_sets = [
        render_once(data / "train" / "synth_clean", clean, 101, "clean"),
        render_once(data / "train" / "synth_hard", args.words - clean, 102, "hard"),
        *_split_real(args.real_data, data, args.held_back, seed=0),
    ]
    render_once(data / "val" / "synth_clean", 500, 103, "clean")
    shards = data / "shards"
    if not (shards / "shards.json").exists():
        prepare_shards(train_sets, shards, Charset.from_name("36"), shard_size=5000)
    store = out / "teacher_store"
    job = CacheJob(str(shards), str(store), DEFAULT_DEMO_TEACHER, RunnerConfig(batch_size=256),
                   device=args.device)  # fmt: skip
    cached = run_cache(job, dask_workers=1, processes=False)
    if cached.failed:
        raise SystemExit(f"caching failed: {cached.failed}")

    steps = max(args.samples // args.batch_size, 1)
    val_every = args.val_every or max(steps // 20, 1)
    vals = sorted(str(p) for p in (data / "val").iterdir())
    cpu = args.device == "cpu"
    parallel = cpu and usable_cores() >= 2  # on one core (taskset): one arm after the other
    arms: list[Arm] = []
    curves: dict[str, list[tuple[int, float]]] = {}
    for seed in args.seeds:
        runs = []
        for arm in ("baseline", "distilled"):
            runs.append(
                TrainConfig(
                    shards=str(shards),
                    teacher_store=str(store) if arm == "distilled" else None,
                    distill=arm == "distilled",
                    out=str(out / "runs" / f"{args.samples}-seed{seed}" / arm),
                    preset=args.preset,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    augment=args.augment,
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
            result = run_evaluation(model, data / "val", device=args.device, speed=False,
                                    echo=False)  # fmt: skip
            rows = result.report.rows
            arms.append(Arm(seed, arm, run_cfg.out, {r.name: r.accuracy for r in rows},
                            {r.name: r.one_minus_ned for r in rows}))  # fmt: skip
            if seed == args.seeds[0]:
                curves.update(_curves(Path(run_cfg.out), args.batch_size, arm))

    names = sorted(arms[0].accuracy)
    lines = [
        f"reference run: {args.words} rendered words + real crops, {args.samples} samples per arm, "
        f"preset {args.preset}, batch {args.batch_size}, seeds {args.seeds}, device {args.device}",
        "",
        "| test set (held back) | baseline | distilled | gain |",
        "|---|---|---|---|",
    ]
    for name in names:
        base = [a.accuracy[name] for a in arms if a.name == "baseline"]
        dist = [a.accuracy[name] for a in arms if a.name == "distilled"]
        gains = [d - b for d, b in zip(dist, base, strict=True)]
        spread = f" ± {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
        lines.append(
            f"| {name} | {statistics.mean(base):.1f} | {statistics.mean(dist):.1f} | "
            f"{statistics.mean(gains):+.1f}{spread} |"
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
