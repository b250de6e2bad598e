"""Cache throughput of a K-view store and the runner thread's own CPU per sample (issue 19).

    OMP_NUM_THREADS=1 nice .venv/bin/python bench/bench_cache_views.py --data ~/runs/views_bench \
        --num 4096 --views 4 --workers 2 [--null]

The runner thread feeds the teacher; anything else it does (before: making views 1…K−1) caps
one runner at 1 / (its CPU per sample) whatever the device. `time.thread_time` around each
`cache_shard` call measures that thread alone; ``--null`` swaps the teacher for fixed features
of the demo teacher's shapes, so the figure is the pipeline's. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from clipocr.cache_teacher import orchestrate
from clipocr.cache_teacher.orchestrate import CacheJob, run_cache
from clipocr.cache_teacher.runner import RunnerConfig
from clipocr.cache_teacher.teacher import DEFAULT_DEMO_TEACHER
from clipocr.commands.demo import render_once
from clipocr.pipeline.charset import Charset
from clipocr.pipeline.shards import prepare_shards


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path.home() / "runs/views_bench")
    p.add_argument("--num", type=int, default=2048, help="rendered clean words")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="decode worker processes")
    p.add_argument("--null", action="store_true", help="no teacher forward: the pipeline alone")
    a = p.parse_args()
    render_once(a.data / "words", a.num, 101, "clean")
    shards = a.data / "shards"
    if not (shards / "shards.json").exists():
        prepare_shards([a.data / "words"], shards, Charset.from_name("36"), shard_size=512)
    store = a.data / "store"
    shutil.rmtree(store, ignore_errors=True)
    thread_cpu: list[float] = []
    real = orchestrate.cache_shard

    def timed(*args, **kw):  # noqa: ANN202 - cache_shard's own signature
        t = time.thread_time()
        out = real(*args, **kw)
        thread_cpu.append(time.thread_time() - t)
        return out

    orchestrate.cache_shard = timed
    if a.null:
        from clipocr.cache_teacher.null_teacher import load_null_teacher

        orchestrate.load_teacher = load_null_teacher
    runner = RunnerConfig(batch_size=128, workers=a.workers)
    job = CacheJob(str(shards), str(store), DEFAULT_DEMO_TEACHER, runner, threads=1, views=a.views)
    tic = time.perf_counter()
    res = run_cache(job, dask_workers=1, processes=False, progress=False)
    wall = time.perf_counter() - tic
    secs = sum(r["seconds"] for r in res.done)
    n = res.samples
    row = {"views": a.views, "null": a.null, "workers": a.workers, "samples": n,
           "samples_per_s": round(n / secs, 1), "wall_s": round(wall, 1),
           "runner_thread_cpu_ms_per_sample": round(1e3 * sum(thread_cpu) / n, 3)}  # fmt: skip
    print(json.dumps(row))
    shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
