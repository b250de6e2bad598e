"""Issue 19 item 4: what cached views buy, measured at the demo's scale (or a fraction of it).

    nice .venv/bin/python bench/views_ablation.py --out ~/runs/h9/views --scale 0.25 --seeds 0 1

Same rendered data (the demo's: clean + hard words, rendered and sharded once under
``OUT/data``), same student recipe (the demo's preset, lr, batch), same steps and seeds; four
arms of the distilled student:

* ``none`` — no augmentation (the demo's and the reference run's setting);
* ``student_aug`` — augmentation on, targets of the clean image (a 1-view store: today);
* ``views2`` / ``views4`` — augmentation on, a K-view store: each epoch a sample shows view
  ``train_view(...)`` and its targets are the teacher's on those very pixels (DESIGN §5).

One store per K is cached with the bundled demo teacher (``--views K``), timed, and measured
(bytes/sample, `TeacherStore.verify`); every student is read by ``clipocr-eval``'s
`run_evaluation` on ``OUT/data/test`` (rendered clean/hard words, plus real crops when
``--real-data`` gives them). Prints word accuracy per set as mean ± sample sd over seeds and
writes ``OUT/views_ablation.json``. Each stage is skipped when its output exists (a rerun resumes).

Runs one training process at a time on one thread (``--parallel 2`` trains two side by side,
one core each). Budget at ``--scale 1``: ≈ 12 min per run on a free core, 4 arms × seeds runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

from clipocr.cache_teacher.orchestrate import CacheJob, run_cache
from clipocr.cache_teacher.runner import RunnerConfig
from clipocr.cache_teacher.teacher import DEFAULT_DEMO_TEACHER
from clipocr.commands.demo import DemoConfig, _real_lmdbs, _train_config, render_once, train_runs
from clipocr.commands.demo_report import set_figures
from clipocr.commands.eval import run_evaluation
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.shards import prepare_shards
from clipocr.pipeline.teacher_store import TeacherStore

ARMS = {"none": (1, False), "student_aug": (1, True), "views2": (2, True), "views4": (4, True)}


def prepare_data(cfg: DemoConfig, data: Path) -> Path:
    """The demo's rendered sets and shards (the same seeds, so the same words as the demo)."""
    render_once(data / "train", cfg.scaled(cfg.train_words), cfg.data_seed + 1, "clean")
    render_once(data / "train_hard", cfg.scaled(cfg.hard_words), cfg.data_seed + 11, "hard")
    render_once(data / "val", cfg.scaled(cfg.test_words) // 2, cfg.data_seed + 2, "clean")
    render_once(data / "test" / "synth_clean", cfg.scaled(cfg.test_words), cfg.data_seed + 3,
                "clean")  # fmt: skip
    render_once(data / "test" / "synth_hard", cfg.scaled(cfg.test_words), cfg.data_seed + 4, "hard")
    if cfg.real_data:
        _real_lmdbs(Path(cfg.real_data), data, cfg.scaled(cfg.real_words), cfg.data_seed)
    shards = data / "shards"
    if not (shards / "shards.json").exists():
        prepare_shards([data / "train", data / "train_hard"], shards, Charset.from_name("36"),
                       shard_size=2000)  # fmt: skip
    return shards


def cache_store(shards: Path, store: Path, views: int, codec: str = "zstd") -> dict:
    """Cache the bundled teacher with `views` views (one thread, decoding in-process): the
    shard tasks' own seconds per sample (decode, K views' augmentation and image tower, text
    table lookups, writing; not the cluster's start) and the store's bytes per sample."""
    job = CacheJob(str(shards), str(store), DEFAULT_DEMO_TEACHER,
                   RunnerConfig(batch_size=128, workers=0, codec=codec), threads=1,
                   views=views)  # fmt: skip
    cpu = time.process_time()  # this process: the dask worker is a thread of it
    result = run_cache(job, dask_workers=1, processes=False, progress=False)
    cpu = time.process_time() - cpu
    report = TeacherStore(store).verify()
    seconds = sum(r["seconds"] for r in result.done)
    n = max(result.samples, 1)
    return {"views": views, "codec": codec, "samples_cached_now": result.samples,
            "ms_per_sample": 1e3 * seconds / n, "cpu_ms_per_sample": 1e3 * cpu / n,
            "bytes_per_sample": report["bytes_per_sample"], "ok": report["ok"]}  # fmt: skip


def measure_costs(out: Path, num: int, codecs: list[str]) -> list[dict]:
    """Teacher time and bytes/sample for K = 1, 2, 4 on `num` rendered clean words."""
    data = out / "costs"
    render_once(data / "words", num, 101, "clean")
    shards = data / "shards"
    if not (shards / "shards.json").exists():
        prepare_shards([data / "words"], shards, Charset.from_name("36"), shard_size=512)
    rows = []
    for codec in codecs:
        for views in (1, 2, 4):
            store = data / f"store_{codec}_k{views}"
            if store.exists():
                shutil.rmtree(store)  # timed afresh
            rows.append(cache_store(shards, store, views, codec))
            print(json.dumps(rows[-1]))
    return rows


HEADS = ("ar", "ctc")  # the decoder (the protocol) and the CTC head on the encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=0.25, help="the demo's --scale")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--real-data", type=Path, help="folder of real crops (as the demo's)")
    parser.add_argument("--parallel", type=int, default=1, help="runs trained side by side")
    parser.add_argument(
        "--costs",
        type=int,
        metavar="N",
        help="only measure teacher time and bytes/sample, K = 1, 2, 4, on N words",
    )
    parser.add_argument("--codecs", nargs="+", default=["zstd", "int8-channel"])
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="read the students OUT already holds; no caching or training (a store made with "
        "another bundled teacher is refused by the cache's resume check, rightly)",
    )
    args = parser.parse_args()
    if args.costs:
        rows = measure_costs(args.out, args.costs, args.codecs)
        (args.out / "views_costs.json").write_text(json.dumps(rows, indent=2) + "\n")
        return
    cfg = DemoConfig(out=str(args.out), scale=args.scale, parallel=args.parallel > 1,
                     real_data=str(args.real_data) if args.real_data else None)  # fmt: skip
    data = args.out / "data"
    shards = prepare_data(cfg, data)
    stores = {}
    costs = []
    for views in sorted({ARMS[a][0] for a in args.arms}):
        stores[views] = args.out / f"store_k{views}"
        if not args.evaluate_only:
            costs.append(cache_store(shards, stores[views], views))
            print(f"store K={views}: {costs[-1]}")
    runs = []
    for seed in args.seeds:
        for arm in args.arms:
            views, augment = ARMS[arm]
            base = _train_config(cfg, shards, stores[views], data / "val",
                                 args.out / "runs" / f"seed{seed}" / arm, distill=True)  # fmt: skip
            runs.append((seed, arm, replace(base, augment=augment, seed=seed)))
    for i in range(0, 0 if args.evaluate_only else len(runs), max(args.parallel, 1)):
        train_runs([r for _, _, r in runs[i : i + max(args.parallel, 1)]], args.parallel > 1)
    # Both heads: augmentation slows the decoder more than the encoder at this budget, so the
    # AR figure alone would charge the decoder's lag to the targets (issue 20 item 4's rule).
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for _, arm, run in runs:
        model = Path(run.out) / "student.safetensors"
        kw = {"batch_size": 64, "device": "cpu", "echo": False, "speed": False, "threads": 1}
        reports = [run_evaluation(model, data / "test", decoding=d, **kw).report for d in HEADS]
        for name, fig in set_figures(*reports).items():
            per_set = results.setdefault(arm, {}).setdefault(name, {})
            for head in ("ar", "ctc", "best"):
                per_set.setdefault(head, []).append(getattr(fig, head))
    out = {"scale": args.scale, "seeds": args.seeds, "costs": costs, "accuracy": results}
    (args.out / "views_ablation.json").write_text(json.dumps(out, indent=2) + "\n")
    sets = sorted({name for arm in results.values() for name in arm})
    for head in ("ar", "ctc", "best"):
        print(f"\nword accuracy % by {head} (mean ± sd, seeds {args.seeds}), scale {args.scale}")
        print(f"{'arm':<12}" + "".join(f"{s:>20}" for s in sets))
        for arm, per_set in results.items():
            cells = []
            for s in sets:
                v = per_set.get(s, {}).get(head, [])
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                cells.append(f"{statistics.mean(v):8.2f} ± {sd:5.2f}" if v else "-")
            print(f"{arm:<12}" + "".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
