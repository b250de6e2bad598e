"""The fault suite's kit: processes, checks and the shared workspace (see `faults.py`).

Every process a case starts goes through `spawn`, so the driver can kill all of them (and their
children) at the end, whatever state a case left them in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "clipocr" / "assets" / "teacher"
TEACHER_ARGS = ["--clip-model", TEACHER / "teacher.json",
                "--clip-pretrained", TEACHER / "teacher.safetensors"]  # fmt: skip
TRAIN_ARGS = ["--preset", "test", "--batch-size", 8, "--max-steps", 24, "--ckpt-every", 8,
              "--threads", 1, "--workers", 0, "--device", "cpu", "--seed", 0]  # fmt: skip
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
# Every timeout is multiplied by this: on a machine shared with other jobs a process can take
# many times its usual wall time to start (``FAULTS_SLOW=3 python bench/faults.py``).
SLOW = float(os.environ.get("FAULTS_SLOW", "1"))
SPAWNED: list[subprocess.Popen] = []  # every process started, killed at the end


# -- processes ---------------------------------------------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(
    args: list[object], log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`python -m clipocr ARGS` in its own process group (so it can be killed with children);
    `env`: variables added to the usual environment. SIGINT is given back its default, so
    Python turns it into KeyboardInterrupt even when this suite runs as a background job of a
    non-interactive shell (which starts it, and so its children, with SIGINT ignored)."""
    out = log.open("w") if log else subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipocr", *map(str, args)], cwd=REPO, env={**ENV, **(env or {})},
        text=True, start_new_session=True, stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.PIPE, preexec_fn=_default_sigint,
    )  # fmt: skip
    SPAWNED.append(proc)
    return proc


def clip(
    *args: object, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `clipocr ARGS` to the end; past `timeout` it is killed and reported as rc 124."""
    proc = spawn(list(args), env=env)
    try:
        out, err = proc.communicate(timeout=timeout * SLOW)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, 124, out, err + "\n[hung: killed]")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout * SLOW)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return 124


def kill_all() -> None:
    for proc in SPAWNED:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def poll_until(test: Callable[[], object], proc: subprocess.Popen, timeout: float = 120) -> object:
    """`test()`'s first truthy value while `proc` still runs (None if it ended first, so the
    fault is reported as not injected instead of passing untested)."""
    end = time.monotonic() + timeout * SLOW
    while proc.poll() is None and time.monotonic() < end:
        value = test()
        if value and proc.poll() is None:
            return value
        time.sleep(0.02)
    return None


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"tracker" not in cmd:
            found.append(int(stat.parent.name))
    return found


# -- checks --------------------------------------------------------------------------------------


def clear_error(done: subprocess.CompletedProcess[str], match: str = "") -> tuple[bool, str]:
    """Exit 1/2, an ``error: …`` line (containing `match`), no traceback."""
    err = done.stderr or ""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    last = lines[-1] if lines else (err.strip().splitlines() or [""])[-1]
    ok = done.returncode in (1, 2) and bool(lines) and "Traceback" not in err
    ok = ok and match.lower() in last.lower()
    return ok, f"rc {done.returncode}: {last[:150]}"


def verify_fails(done: subprocess.CompletedProcess[str], match: str = "") -> tuple[bool, str]:
    """`--verify` exit 1 with a FAILED report naming a PROBLEM (and containing `match`)."""
    problems = [line for line in done.stdout.splitlines() if line.startswith("PROBLEM")]
    ok = done.returncode == 1 and "FAILED" in done.stdout and bool(problems)
    ok = ok and "Traceback" not in done.stderr and match in "\n".join(problems)
    return ok, f"rc {done.returncode}: {(problems or [done.stderr.strip()[-150:]])[0][:150]}"


def shard_failures(done: subprocess.CompletedProcess[str], match: str = "") -> tuple[bool, str]:
    """`cache-teacher` exit 1 with one ``failed: SHARD: why`` line per bad shard (containing
    `match`) and no traceback: a bad shard fails alone, the others are cached."""
    lines = [line for line in done.stderr.splitlines() if line.startswith("failed: ")]
    ok = done.returncode == 1 and bool(lines) and "Traceback" not in done.stderr
    ok = ok and all(match in line for line in lines)
    last = lines[-1] if lines else (done.stderr.strip().splitlines() or [""])[-1]
    return ok, f"rc {done.returncode}: {last[:150]}"


def refused(done: subprocess.CompletedProcess[str]) -> tuple[bool, str]:
    """Either an ``error: …`` line or a FAILED `--verify` report."""
    ok, note = clear_error(done)
    return (ok, note) if ok else verify_fails(done)


def verify_ok(store: Path, shards: Path) -> tuple[bool, str]:
    done = clip("cache-teacher", "--verify", store, "--shards", shards, timeout=120)
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return done.returncode == 0 and last == "OK", f"verify: {last[:100]}"


def samples_digest(shards: Path) -> str:
    """A digest of every sample (key, label, image bytes) in shard order, and the index counts."""
    from clipocr.pipeline.shards import iter_shard_raw, load_index, shard_paths

    h = hashlib.sha256()
    for path in shard_paths(shards):
        for key, image, label in iter_shard_raw(path):
            h.update(f"{key}\t{label}\t".encode() + hashlib.sha256(image).digest())
    index = load_index(shards)
    h.update(json.dumps([(s["name"], s["count"]) for s in index["shards"]]).encode())
    return h.hexdigest()[:16]


def same_student(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def lmdb_samples(path: Path, n: int) -> list[tuple[bytes, str]]:
    """The first `n` (image bytes, label) pairs of an STR LMDB."""
    from clipocr.pipeline.lmdb_io import LmdbReader

    reader = LmdbReader(path)
    try:
        return [(image, label) for _, (_, image, label) in zip(range(n), reader.iter_raw())]
    finally:
        reader.close()


def write_lmdb(path: Path, items: list[tuple[bytes, bytes | str]], num: object = None) -> Path:
    """An STR LMDB written key by key, so it can be wrong on purpose: `num` is stored as the
    ``num-samples`` value (None: the true count; False: no such key)."""
    import lmdb

    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i, (image, label) in enumerate(items, 1):
            txn.put(b"image-%09d" % i, image)
            txn.put(b"label-%09d" % i, label.encode() if isinstance(label, str) else label)
        if num is not False:
            txn.put(b"num-samples", str(len(items) if num is None else num).encode())
    env.close()
    return path


def png(size: tuple[int, int]) -> bytes:
    """A white PNG of `size` (width, height)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (255, 255, 255)).save(buf, format="PNG")
    return buf.getvalue()


def group_dirs(store: Path, tmp: bool) -> list[Path]:
    """A store's unpublished groups (`tmp`), or its published shard groups (not the text
    table, which is no shard's)."""
    if not store.exists():
        return []
    prefix = ".tmp-" if tmp else "shard-"
    return [p for p in store.iterdir() if p.is_dir() and p.name.startswith(prefix)]


def writer_pid(store: Path) -> int | None:
    """The pid of a process that has an unpublished group open in `store` now."""
    from clipocr.pipeline.teacher_store.location import Location
    from clipocr.pipeline.teacher_store.ownership import read_owner

    for tmp in group_dirs(store, tmp=True):
        owner = read_owner(Location(store), tmp.name)
        if owner is not None:
            return owner.pid
    return None


def chunk_file(store: Path, array: str = "image_s1") -> Path:
    """The biggest chunk file of `array` in the first group (metadata files excluded)."""
    group = sorted(group_dirs(store, tmp=False))[0]
    files = [p for p in (group / array).rglob("*") if p.is_file() and not p.name.startswith(".")]
    return max((p for p in files if p.name != "zarr.json"), key=lambda p: p.stat().st_size)


# -- the workspace -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    kind: str  # "fault" or "bad input"
    ok: bool | None  # None: skipped
    note: str
    seconds: float


class Work:
    """The shared dataset, built once: an LMDB, its shards, a teacher store, a reference run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lmdb = root / "data" / "lmdb"
        self.shards = root / "data" / "shards"
        self.store = root / "data" / "store"
        self.ref = root / "runs" / "ref"
        self.big = root / "data" / "big_lmdb"
        self.big_ref = root / "data" / "big_ref"
        self.tmpfs: Path | None = None
        self.readonly: Path | None = None
        self.n = 0

    def path(self, name: str) -> Path:
        self.n += 1
        return self.root / "cases" / f"{self.n:02d}-{name}"

    def build(self) -> None:
        """Render and prepare the data, cache it, train the reference run; a `--work` folder
        built before is reused (only its per-case folders are cleared)."""
        shutil.rmtree(self.root / "cases", ignore_errors=True)
        built = self.root / "built"
        if not built.exists():
            self._build()
            built.touch()
        self.tmpfs = self._mount(self.root / "tmpfs")
        self.readonly = self._mount(self.root / "readonly", "ro,size=1m")

    def reference(self, workers: int) -> Path:
        """The reference run made with `--workers N` (the shard split depends on it), built on
        first use."""
        if workers == 0:
            return self.ref
        ref = self.root / "runs" / f"ref-workers{workers}"
        if not (ref / "student.safetensors").exists():
            shutil.rmtree(ref, ignore_errors=True)
            args = self.train_args(ref)
            args[args.index("--workers") + 1] = workers
            done = clip(*args, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"reference run failed: {done.stderr[-300:]}")
        return ref

    def _build(self) -> None:
        for args in (
            ["synth", "--out", self.lmdb, "--num", 192, "--seed", 0],
            ["prepare", "--lmdb", self.lmdb, "--out", self.shards, "--shard-size", 32],
            ["synth", "--out", self.big, "--num", 2400, "--seed", 1],
            ["prepare", "--lmdb", self.big, "--out", self.big_ref, "--shard-size", 100],
            ["cache-teacher", "--shards", self.shards, "--out", self.store, *self.cache_args()],
            ["train", "--shards", self.shards, "--teacher-store", self.store, "--out", self.ref,
             *TRAIN_ARGS],
        ):  # fmt: skip
            done = clip(*args, timeout=300)
            if done.returncode != 0:
                sys.exit(f"setup failed: clipocr {args[0]}: {done.stderr[-2000:]}")

    def cache_args(self, processes: bool = False, workers: int = 0) -> list[object]:
        mode = "--dask-processes" if processes else "--dask-threads"
        return [*TEACHER_ARGS, "--device", "cpu", "--batch-size", 8, "--workers", workers,
                mode, "--dask-workers", 2 if processes else 1]  # fmt: skip

    def train_args(self, out: Path, store: Path | None = None, *more: object) -> list[object]:
        return ["train", "--shards", self.shards, "--teacher-store", store or self.store,
                "--out", out, *TRAIN_ARGS, *more]  # fmt: skip

    @staticmethod
    def _mount(where: Path, options: str = "size=2m") -> Path | None:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)  # fmt: skip
        return where if done.returncode == 0 else None

    def tmpfs_path(self, name: str) -> Path | None:
        """Where a disk-full case writes (None without a tmpfs: the case is skipped)."""
        return None if self.tmpfs is None else self.tmpfs / name

    def resize(self, size: str) -> None:
        assert self.tmpfs is not None
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.tmpfs)], check=True)

    def unmount(self) -> None:
        for where in (self.tmpfs, self.readonly):
            if where is not None:
                subprocess.run(["umount", str(where)], check=False)
