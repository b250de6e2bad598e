"""The bad inputs issue 23's probe added: 16-bit images, a decompression-bomb-sized image next
to good ones, an LMDB's negative count, sets whose every label is dropped, file names with a tab
or a newline, duplicate and conflicting ``labels.tsv`` rows, NaN weights, an unreachable
scheduler, unloadable teacher weights and a config value of the wrong type. Each must be
handled (a one-line error, a counted skip, or the right reading). Run by `faults.py`."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

from bad_inputs_run import _image, _read, _train_config
from fault_kit import TEACHER, TEACHER_ARGS, Work, clear_error, clip, lmdb_samples, write_lmdb

BUNDLED_READ = ("read", "--threads", 1)  # no checkpoint: the bundled student (reads clean words)


def _word_png(text: str = "pneumatic", mode: str = "L") -> bytes:
    """A clean black-on-white word the bundled student reads, as an 8-bit `mode` PNG."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (256, 64), 255)
    try:
        font = ImageFont.load_default(size=40)
    except TypeError:  # Pillow < 10.1 has one size
        font = ImageFont.load_default()
    ImageDraw.Draw(img).text((8, 6), text, fill=0, font=font)
    buf = io.BytesIO()
    img.convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _readings(done) -> list[str]:
    return [line.split("\t")[1] for line in done.stdout.splitlines() if "\t" in line]


def b_16bit_png(w: Work) -> tuple[bool, str]:
    """A 16-bit grey PNG reads as its 8-bit twin does (before: as a blank image)."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(_word_png())))
    buf = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(buf, format="PNG")  # mode I;16
    eight = _image(w, "word8.png", _word_png())
    sixteen = _image(w, "word16.png", buf.getvalue())
    done = clip(*BUNDLED_READ, eight, sixteen)
    texts = _readings(done)
    ok = done.returncode == 0 and len(texts) == 2 and texts[0] == texts[1] and texts[0] != ""
    return ok, f"rc {done.returncode}: 8-bit reads {texts[:1]}, 16-bit {texts[1:]}"


def _bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header claims `width`×`height` (PIL refuses it as a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + b"\xff" * 64)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))  # fmt: skip


def b_read_bomb_between_good(w: Work) -> tuple[bool, str]:
    """One error line for the bomb; the good files given with it are read (before: a
    DecompressionBombError traceback and nothing read)."""
    good = [_image(w, f"good{i}.png", _word_png()) for i in range(2)]
    bomb = _image(w, "bomb.png", _bomb_png())
    done = clip(*BUNDLED_READ, good[0], bomb, good[1])
    ok, note = clear_error(done, "bomb.png")
    read = [line.split("\t")[0] for line in done.stdout.splitlines()]
    return ok and read == [str(g) for g in good], f"{note}; read {len(read)} of 2 good files"


def _eval_lmdb(w: Work, name: str, items, num=None):
    db = write_lmdb(w.path(name) / "lmdb", items, num=num)
    return clip("eval", w.ref / "student.safetensors", "--data", db.parent)


def b_negative_count(w: Work) -> tuple[bool, str]:
    """``num-samples`` −5 with 10 records: refused in one line (before: 0 samples, exit 0)."""
    image = lmdb_samples(w.lmdb, 1)[0][0]
    return clear_error(_eval_lmdb(w, "count-5", [(image, "word")] * 10, num=-5), "num-samples")


def _every_label_dropped(w: Work, name: str, label: str, why: tuple[str, ...]):
    """A set whose every label is dropped scores 0 samples, and says why beside the 0."""
    image = lmdb_samples(w.lmdb, 1)[0][0]
    done = _eval_lmdb(w, name, [(image, label)] * 4)
    said = any(word in done.stdout.lower() for word in why)
    ok = done.returncode == 0 and "Traceback" not in done.stderr and said
    return ok, f"rc {done.returncode}: reason given: {said}"


def b_tsv_odd_names(w: Work) -> tuple[bool, str]:
    """Names with a tab or a newline: still one row of three columns per file."""
    folder = w.path("odd-names")
    folder.mkdir(parents=True)
    for name in ("plain.png", "tab\there.png", "new\nline.png"):
        (folder / name).write_bytes(_word_png())
    done = clip(*BUNDLED_READ, folder)
    rows = done.stdout.splitlines()
    ok = done.returncode == 0 and len(rows) == 3 and all(r.count("\t") == 2 for r in rows)
    return (
        ok,
        f"rc {done.returncode}: {len(rows)} rows, columns {[r.count(chr(9)) + 1 for r in rows]}",
    )


def _labelled_folder(w: Work, name: str, rows: list[str]) -> Path:
    folder = w.path(name)
    folder.mkdir(parents=True)
    for i in range(2):
        (folder / f"{i}.png").write_bytes(_word_png())
    (folder / "labels.tsv").write_text("".join(row + "\n" for row in rows))
    return folder


def b_duplicate_rows(w: Work) -> tuple[bool, str]:
    """The same row twice: one sample, the duplicate skipped and counted (before: kept twice)."""
    folder = _labelled_folder(w, "dup-rows", ["0.png\tpneumatic", "0.png\tpneumatic", "1.png\tx"])
    out = w.path("dup-rows-shards")
    done = clip("prepare", "--folder", folder, "--out", out, "--shard-size", 10)
    if done.returncode != 0:
        return False, f"rc {done.returncode}: {done.stderr.strip()[-120:]}"
    index = json.loads((out / "shards.json").read_text())
    count = sum(s["count"] for s in index["shards"])
    counted = "dup" in json.dumps(index).lower() or "dup" in done.stdout.lower()
    return count == 2 and counted, f"{count} samples; duplicate counted: {counted}"


def b_conflicting_rows(w: Work) -> tuple[bool, str]:
    """One file with two labels: refused in a line naming both rows (before: two samples)."""
    folder = _labelled_folder(w, "conflict-rows", ["0.png\tpneumatic", "0.png\tother"])
    done = clip("prepare", "--folder", folder, "--out", w.path("conflict-shards"))
    ok, note = clear_error(done, "0.png")
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return ok and "pneumatic" in last and "other" in last, note


def b_nan_weights(w: Work) -> tuple[bool, str]:
    """A student checkpoint with NaN weights is refused at load (before: empty text, nan)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = w.ref / "student.safetensors"
    with safe_open(str(src), "pt") as fh:
        weights = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = fh.metadata()
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[name] = torch.full_like(weights[name], float("nan"))
    bad = w.path("nan-student").with_suffix(".safetensors")
    bad.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(bad), metadata=meta)
    image = _image(w, "nan-read.png", _word_png())
    done = _read(w, image, checkpoint=bad)
    ok, note = clear_error(done)
    last = (done.stderr.strip().splitlines() or [""])[-1].lower()
    return ok and ("nan" in last or "finite" in last), note


def b_unreachable_scheduler(w: Work) -> tuple[bool, str]:
    """`--scheduler` nobody listens on: one line, and no store left behind (connect timeout cut
    to 3 s here; by default dask tries for 30 s)."""
    out = w.path("unreachable-scheduler")
    done = clip("cache-teacher", "--shards", w.shards, "--out", out, *TEACHER_ARGS, "--device",
                "cpu", "--scheduler", "tcp://127.0.0.1:1",
                env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"})  # fmt: skip
    ok, note = clear_error(done, "127.0.0.1:1")
    return ok and not out.exists(), f"{note}; --out left behind: {out.exists()}"


def _pretrained(w: Work, name: str, data: bytes, why: str) -> tuple[bool, str]:
    weights = _image(w, name, data)
    done = clip("cache-teacher", "--shards", w.shards, "--out", w.path("s"), "--device", "cpu",
                "--clip-model", TEACHER / "teacher.json", "--clip-pretrained", weights)  # fmt: skip
    return clear_error(done, why)


def b_pretrained_cut_short(w: Work) -> tuple[bool, str]:
    """Half a torch checkpoint (before: "[Errno 22] Invalid argument" or "(101)")."""
    import torch
    from safetensors.torch import load_file

    buf = io.BytesIO()
    torch.save(load_file(TEACHER / "teacher.safetensors"), buf)
    data = buf.getvalue()
    return _pretrained(w, "cut.pt", data[: len(data) // 2], "cut short")


def b_pretrained_misfit(w: Work) -> tuple[bool, str]:
    """Weights of another shape and a missing one: named and counted (before: "Error(s) in
    loading state_dict for CLIP:" and nothing after)."""
    import torch
    from safetensors.torch import load_file, save

    state = load_file(TEACHER / "teacher.safetensors")
    state.pop(sorted(state)[0])
    name = next(k for k, v in state.items() if v.ndim == 2)
    state[name] = torch.zeros(3, 3)
    return _pretrained(w, "misfit.safetensors", save(state), "do not fit")


BAD_23 = [
    ("16-bit grey PNG → read (as its 8-bit twin)", b_16bit_png),
    ("decompression-bomb PNG between good ones → read", b_read_bomb_between_good),
    ("LMDB num-samples −5 → eval", b_negative_count),
    ("every label 200 characters → eval says why",
     lambda w: _every_label_dropped(w, "labels-long", "a" * 200, ("long",))),
    ("every label Chinese → eval says why",
     lambda w: _every_label_dropped(w, "labels-chinese", "中文字", ("ascii", "charset", "empty"))),
    ("file names with a tab / a newline → read TSV", b_tsv_odd_names),
    ("labels.tsv duplicate rows → prepare (counted)", b_duplicate_rows),
    ("labels.tsv conflicting rows → prepare", b_conflicting_rows),
    ("student checkpoint with NaN weights → read", b_nan_weights),
    ("cache-teacher --scheduler nobody listens on", b_unreachable_scheduler),
    ("--clip-pretrained a torch checkpoint cut short", b_pretrained_cut_short),
    ("--clip-pretrained weights of another model", b_pretrained_misfit),
    ("--config student.enc_dim \"big\"",
     lambda w: _train_config(w, "cfg-enc-dim", {"student": {"enc_dim": "big"}}, "enc_dim")),
]  # fmt: skip
