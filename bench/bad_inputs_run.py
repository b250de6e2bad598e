"""Bad inputs to `train`, `eval`, `read` and `teacher-pretrain` (and `--resume`): each must be
handled with a one-line error or a counted skip. Run by `faults.py`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bad_inputs import (
    _edited_dims,
    _other_shards,
    _shards_copy,
    _store_copy,
    _truncated_lmdb,
)
from fault_kit import (
    TEACHER,
    TRAIN_ARGS,
    Work,
    chunk_file,
    clear_error,
    clip,
    lmdb_samples,
    write_lmdb,
)


def _config(w: Work, name: str, values: dict | str) -> Path:
    path = w.path(name).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(values if isinstance(values, str) else json.dumps(values))
    return path


def _train_config(w: Work, name: str, values: dict | str, match: str = "") -> tuple[bool, str]:
    """`train --config FILE` where FILE sets `values` (flags would override it, so only the
    data and the machine are given as flags; the rest is a tiny run if the file were taken)."""
    if isinstance(values, dict):
        values = {"preset": "test", "batch_size": 8, "max_steps": 2, **values}
    cfg = _config(w, name, values)
    args = ["train", "--shards", w.shards, "--teacher-store", w.store, "--out",
            cfg.with_suffix(".run"), "--config", cfg, *TRAIN_ARGS[-8:]]  # fmt: skip
    return clear_error(clip(*args), match)


def _run_copy(w: Work, name: str, keep: str = "step-00000016") -> Path:
    """The reference run as it stood when its `keep` checkpoint was the newest."""
    run = w.path(name)
    shutil.copytree(w.ref, run, ignore=lambda d, names: [
        n for n in names if n.startswith("step-") and n != keep or n == "student.safetensors"
    ])  # fmt: skip
    return run


def b_truncated_mdb_eval(w):
    db = _truncated_lmdb(w, "trunc-mdb-eval")
    return clear_error(clip("eval", w.ref / "student.safetensors", "--data", db.parent))


def b_other_shards_train(w):
    other = _other_shards(w)
    args = ["train", "--shards", other, "--teacher-store", w.store,
            "--out", w.path("other-shards-train"), *TRAIN_ARGS]  # fmt: skip
    return clear_error(clip(*args))


def b_corrupt_chunk_train(w):
    store = _store_copy(w, "corrupt-train")
    chunk = chunk_file(store)
    chunk.write_bytes(chunk.read_bytes()[:40] + b"\0" * 64)
    return clear_error(clip(*w.train_args(w.path("corrupt-train-run"), store)), "shard-")


def b_edited_dims_train(w):
    return clear_error(clip(*w.train_args(w.path("dims-run"), _edited_dims(w))))


def b_no_index_train(w):
    shards = w.path("no-index-train")
    shutil.copytree(w.shards, shards)
    (shards / "shards.json").unlink()
    args = ["train", "--shards", shards, "--teacher-store", w.store, "--out", shards / "run",
            *TRAIN_ARGS]  # fmt: skip
    return clear_error(clip(*args))


def b_truncated_state(w):
    run = _run_copy(w, "trunc-state")
    state = run / "checkpoints" / "step-00000016" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    return clear_error(clip(*w.train_args(run, None, "--resume")))


def b_truncated_config(w):
    run = _run_copy(w, "trunc-config")
    (run / "config.json").write_text((run / "config.json").read_text()[:50])
    return clear_error(clip(*w.train_args(run, None, "--resume")), "config.json")


def b_resume_other_workers(w):
    run = _run_copy(w, "resume-workers")
    args = w.train_args(run, None, "--resume")
    args[args.index("--workers") + 1] = 2
    return clear_error(clip(*args), "workers")


def b_resume_other_lr(w):
    return clear_error(clip(*w.train_args(_run_copy(w, "resume-lr"), None, "--resume",
                                          "--lr", 0.5)))  # fmt: skip


def b_resume_past_budget(w):
    args = w.train_args(_run_copy(w, "past-budget"), None, "--resume")
    args[args.index("--max-steps") + 1] = 8
    return clear_error(clip(*args), "step budget")


def b_resume_nothing(w):
    return clear_error(clip(*w.train_args(w.path("fresh"), None, "--resume")), "resume")


def b_other_run_in_out(w):
    run = _run_copy(w, "other-run")
    return clear_error(clip(*w.train_args(run, None, "--lr", 0.5)))


def b_worker_error_line(w):
    """A store error raised inside a DataLoader worker reads as its own line, not torch's
    "Caught InputError in DataLoader worker process 0" and the worker's traceback."""
    store = _store_copy(w, "worker-error")
    chunk = chunk_file(store)
    chunk.write_bytes(chunk.read_bytes()[:40] + b"\0" * 64)
    args = w.train_args(w.path("worker-error-run"), store)
    args[args.index("--workers") + 1] = 2
    done = clip(*args)
    ok, note = clear_error(done, "shard-")
    return ok and "Caught" not in done.stderr, note


TEACHER_WEIGHTS = TEACHER / "teacher.safetensors"


def _train(w: Work, shards: Path, store: Path | None, out: Path, *more: object):
    return clip("train", "--shards", shards, "--teacher-store", store or w.store, "--out", out,
                *TRAIN_ARGS, *more)  # fmt: skip


def b_deleted_shard_train(w):
    shards = _shards_copy(w, "deleted-shard-train")
    (shards / "shard-000002.tar").unlink()
    return clear_error(_train(w, shards, None, shards.parent / "run"),
                       "shard-000002.tar: listed in shards.json but missing")  # fmt: skip


def b_truncated_shard_train(w):
    shards = _shards_copy(w, "truncated-shard-train")
    tar = shards / "shard-000002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2 + 100])
    return clear_error(_train(w, shards, None, shards.parent / "run"), "shard-000002.tar")


def b_index_shape_train(w):
    shards = _shards_copy(w, "index-shape-train")
    index = json.loads((shards / "shards.json").read_text())
    del index["charset"]
    (shards / "shards.json").write_text(json.dumps(index))
    return clear_error(_train(w, shards, None, shards.parent / "run"), "not a shards.json")


def b_store_without_manifest(w):
    store = _store_copy(w, "no-manifest")
    (store / "manifest.json").unlink()
    return clear_error(_train(w, w.shards, store, w.path("no-manifest-run")), "manifest.json")


def b_missing_val_lmdb(w):
    """Refused before training starts (it used to fail at the first validation, after the
    run), leaving no run folder behind."""
    out = w.path("val-missing")
    done = _train(w, w.shards, None, out, "--val", w.path("no-val-lmdb"))
    ok, note = clear_error(done, "no such LMDB")
    return ok and not (out / "config.json").exists(), note


def _student(w: Work, name: str, data: bytes) -> Path:
    path = w.path(name).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncated_student(w: Work, name: str) -> Path:
    data = (w.ref / "student.safetensors").read_bytes()
    return _student(w, name, data[: len(data) // 2])


def _image(w: Work, name: str, data: bytes) -> Path:
    path = w.path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _read(w: Work, *paths: object, checkpoint: Path | None = None):
    return clip("read", checkpoint or w.ref / "student.safetensors", *paths)


def b_read_zero_byte_next_to_good(w):
    """The unreadable file is named on its own line (exit 1), the good one is still read."""
    good = _image(w, "good.jpg", lmdb_samples(w.lmdb, 1)[0][0])
    zero = _image(w, "zero.png", b"")
    done = _read(w, zero, good)
    ok, note = clear_error(done, "zero.png")
    return ok and str(good) in done.stdout, note


def b_eval_odd_labels(w):
    """Labels past the max length or not UTF-8 in a test LMDB: counted and scored as the
    protocol says, not a crash."""
    image = lmdb_samples(w.lmdb, 1)[0][0]
    db = write_lmdb(w.path("odd-labels") / "lmdb",
                    [(image, "a" * 40), (image, b"ab\xff"), (image, "word")])  # fmt: skip
    done = clip("eval", w.ref / "student.safetensors", "--data", db.parent)
    ok = done.returncode == 0 and "Traceback" not in done.stderr
    return ok, f"rc {done.returncode}: {(done.stdout.strip().splitlines() or [''])[-1][:120]}"


def b_teacher_pretrain_config(w):
    cfg = w.path("pretrain-cfg").with_suffix(".json")
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("[1, 2")
    return clear_error(clip("teacher-pretrain", "--config", cfg, "--data", w.lmdb, "--out",
                            w.path("tp"), "--steps", 1), "JSON")  # fmt: skip


BAD_RUN = [
    ("--config max_steps \"2\"", lambda w: _train_config(w, "cfg-str", {"max_steps": "2"})),
    ("--config batch_size 0", lambda w: _train_config(w, "cfg-zero", {"batch_size": 0})),
    ("--config unknown preset", lambda w: _train_config(w, "cfg-preset", {"preset": "huge"})),
    ("--config keep_checkpoints -100",
     lambda w: _train_config(w, "cfg-keep", {"keep_checkpoints": -100})),
    ("--config not JSON", lambda w: _train_config(w, "cfg-garbage", "{max_steps: 2")),
    ("--config unknown key", lambda w: _train_config(w, "cfg-key", {"max_stepz": 2})),
    ("store of other shards → train", b_other_shards_train),
    ("corrupted chunk → train (names the shard)", b_corrupt_chunk_train),
    ("manifest with edited dims → train", b_edited_dims_train),
    ("store without manifest.json → train", b_store_without_manifest),
    ("shards.json missing → train", b_no_index_train),
    ("shards.json of the wrong shape → train", b_index_shape_train),
    ("shard deleted after prepare → train", b_deleted_shard_train),
    ("truncated shard → train", b_truncated_shard_train),
    ("input error with --workers 2 (no 'Caught')", b_worker_error_line),
    ("train --charset 94 on 36-symbol shards and store",
     lambda w: clear_error(_train(w, w.shards, None, w.path("cs94"), "--charset", 94), "94")),
    ("train --teacher-store missing",
     lambda w: clear_error(_train(w, w.shards, w.path("no-store"), w.path("r")), "teacher store")),
    ("train --val a missing LMDB (before training)", b_missing_val_lmdb),
    ("train --shards missing", lambda w: clear_error(clip("train", "--shards", w.path("none"),
                                                          "--teacher-store", w.store, "--out",
                                                          w.path("r"), *TRAIN_ARGS))),
    ("truncated state.pt, no older checkpoint", b_truncated_state),
    ("truncated config.json + --resume", b_truncated_config),
    ("--resume with another --workers", b_resume_other_workers),
    ("--resume with another --lr", b_resume_other_lr),
    ("--resume with a smaller --max-steps", b_resume_past_budget),
    ("--resume where no run is", b_resume_nothing),
    ("train into another run's folder", b_other_run_in_out),
    ("truncated data.mdb → eval", b_truncated_mdb_eval),
    ("eval a missing checkpoint",
     lambda w: clear_error(clip("eval", w.path("none.safetensors"), "--data", w.lmdb))),
    ("eval a truncated student checkpoint",
     lambda w: clear_error(clip("eval", _truncated_student(w, "trunc-student"), "--data", w.lmdb),
                           "not a clipocr student")),
    ("eval the teacher's weights as a student",
     lambda w: clear_error(clip("eval", TEACHER_WEIGHTS, "--data", w.lmdb),
                           "not a clipocr student")),
    ("eval --data a folder without an LMDB",
     lambda w: clear_error(clip("eval", w.ref / "student.safetensors", "--data", w.ref),
                           "no LMDB")),
    ("eval an empty LMDB",
     lambda w: clear_error(clip("eval", w.ref / "student.safetensors", "--data",
                                write_lmdb(w.path("eval-empty") / "lmdb", []).parent))),
    ("eval labels too long / not UTF-8 (counted)", b_eval_odd_labels),
    ("eval --charset 99", lambda w: clear_error(clip("eval", w.ref / "student.safetensors",
                                                     "--data", w.lmdb, "--charset", 99))),
    ("read with a truncated student checkpoint",
     lambda w: clear_error(_read(w, _image(w, "r.png", lmdb_samples(w.lmdb, 1)[0][0]),
                                 checkpoint=_truncated_student(w, "trunc-student-read")),
                           "not a clipocr student")),
    ("read a text file", lambda w: clear_error(_read(w, _image(w, "notes.txt", b"hello")),
                                               "not a readable image")),
    ("read a missing file", lambda w: clear_error(_read(w, w.path("gone.png")), "no such file")),
    ("read a 0-byte image next to a good one", b_read_zero_byte_next_to_good),
    ("teacher-pretrain --data missing",
     lambda w: clear_error(clip("teacher-pretrain", "--data", w.path("none"), "--out",
                                w.path("tp"), "--steps", 1), "no such LMDB")),
    ("teacher-pretrain --config not JSON", b_teacher_pretrain_config),
    ("teacher-pretrain --steps 0",
     lambda w: clear_error(clip("teacher-pretrain", "--data", w.lmdb, "--out", w.path("tp"),
                                "--steps", 0), "steps")),
]  # fmt: skip
