"""Bad inputs to `synth`, `prepare` and `cache-teacher` (corrupt, truncated, foreign or
contradictory files and flags): each must be handled with a one-line error, a FAILED `--verify`
report or a counted skip. Run by `faults.py`; `bad_inputs_run.py` has those of the later steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fault_kit import (
    TEACHER,
    TEACHER_ARGS,
    TRAIN_ARGS,
    Work,
    chunk_file,
    clear_error,
    clip,
    lmdb_samples,
    png,
    refused,
    shard_failures,
    verify_fails,
    write_lmdb,
)


def _truncated_lmdb(w: Work, name: str) -> Path:
    db = w.path(name) / "lmdb"
    shutil.copytree(w.lmdb, db)
    mdb = db / "data.mdb"
    with mdb.open("r+b") as f:
        f.truncate(mdb.stat().st_size // 3)
    return db


def _folder(w: Work, name: str, tsv: bytes) -> Path:
    folder = w.path(name) / "images"
    folder.mkdir(parents=True)
    for i, (image, _) in enumerate(lmdb_samples(w.lmdb, 3)):
        (folder / f"{i}.png").write_bytes(image)
    (folder / "labels.tsv").write_bytes(tsv)
    (folder.parent / "outside.png").write_bytes((folder / "0.png").read_bytes())
    return folder


def _store_copy(w: Work, name: str) -> Path:
    store = w.path(name)
    shutil.copytree(w.store, store)
    return store


def _other_shards(w: Work) -> Path:
    other = w.root / "data" / "other_shards"
    if not other.exists():
        clip("synth", "--out", w.root / "data" / "other_lmdb", "--num", 192, "--seed", 5)
        clip("prepare", "--lmdb", w.root / "data" / "other_lmdb", "--out", other,
             "--shard-size", 32)  # fmt: skip
    return other


def b_truncated_mdb_prepare(w):
    db = _truncated_lmdb(w, "trunc-mdb")
    return clear_error(clip("prepare", "--lmdb", db, "--out", db.parent / "shards"))


def b_non_utf8_tsv(w):
    folder = _folder(w, "tsv-bytes", b"0.png\tabc\n1.png\t\xff\xfeab\n")
    return clear_error(clip("prepare", "--folder", folder, "--out", folder.parent / "s"))


def b_tsv_escape(w, target):
    folder = _folder(w, "tsv-escape", f"0.png\tabc\n{target}\tdef\n".encode())
    return clear_error(clip("prepare", "--folder", folder, "--out", folder.parent / "s"))


def b_non_utf8_lmdb_label(w):
    import lmdb

    db = w.path("lmdb-label") / "lmdb"
    db.parent.mkdir(parents=True)
    images = [image for image, _ in lmdb_samples(w.lmdb, 4)]
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, image in enumerate(images, 1):
            txn.put(b"image-%09d" % i, image)
            txn.put(b"label-%09d" % i, b"ab\xff" if i == 2 else b"word")
        txn.put(b"num-samples", b"4")
    env.close()
    done = clip("prepare", "--lmdb", db, "--out", db.parent / "s")
    index_path = db.parent / "s" / "shards.json"
    index = json.loads(index_path.read_text()) if done.returncode == 0 else {}
    skipped = index.get("skipped") or {}
    ok = done.returncode == 0 and index.get("num_samples") == 3 and sum(skipped.values()) == 1
    return ok, f"rc {done.returncode}; counted skip: {skipped}"


def b_prepare_other_size(w):
    out = w.path("other-size")
    shutil.copytree(w.big_ref, out)
    (out / "shards.json").unlink()
    for tar in sorted(out.glob("*.tar"))[-3:]:
        tar.unlink()
    return clear_error(clip("prepare", "--lmdb", w.big, "--out", out, "--shard-size", 64),
                       "shard-size")  # fmt: skip


def b_corrupt_chunk_verify(w):
    store = _store_copy(w, "corrupt-chunk")
    chunk = chunk_file(store)
    data = bytearray(chunk.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4] = bytes(b ^ 0xFF for b in data[mid : mid + 4])
    chunk.write_bytes(bytes(data))
    return verify_fails(clip("cache-teacher", "--verify", store, "--shards", w.shards))


def b_deleted_chunk_verify(w):
    store = _store_copy(w, "deleted-chunk")
    chunk_file(store).unlink()
    return verify_fails(clip("cache-teacher", "--verify", store, "--shards", w.shards))


def b_other_shards_verify(w):
    return verify_fails(clip("cache-teacher", "--verify", w.store, "--shards", _other_shards(w)))


def _edited_dims(w):
    store = _store_copy(w, "edited-dims")
    manifest = json.loads((store / "manifest.json").read_text())
    key = next(iter(manifest["dims"]))
    manifest["dims"][key] += 1
    (store / "manifest.json").write_text(json.dumps(manifest))
    return store


def b_edited_dims_verify(w):
    return verify_fails(clip("cache-teacher", "--verify", _edited_dims(w), "--shards", w.shards))


def _shards_copy(w: Work, name: str) -> Path:
    shards = w.path(name) / "shards"
    shutil.copytree(w.shards, shards)
    return shards


def _cache(w: Work, shards: Path, out: Path, *more: object):
    return clip("cache-teacher", "--shards", shards, "--out", out, *w.cache_args(), *more)


def _index_of(shards: Path) -> dict:
    path = shards / "shards.json"
    return json.loads(path.read_text()) if path.exists() else {}


def b_empty_lmdb(w):
    db = write_lmdb(w.path("empty-lmdb") / "lmdb", [])
    return clear_error(clip("prepare", "--lmdb", db, "--out", db.parent / "s"), "no usable")


def b_lmdb_without_count(w):
    image = lmdb_samples(w.lmdb, 1)[0][0]
    db = write_lmdb(w.path("no-count") / "lmdb", [(image, "word")], num=False)
    return clear_error(clip("prepare", "--lmdb", db, "--out", db.parent / "s"), "num-samples")


def b_odd_image_sizes(w):
    """1×1000, 1000×1 and 1×1 pixel images are resized like any other; a 0-byte image is a
    counted skip; the shards then cache and train."""
    image = lmdb_samples(w.lmdb, 1)[0][0]
    items = [(png((1, 1000)), "tall"), (png((1000, 1)), "wide"), (png((1, 1)), "dot"),
             (b"", "empty"), (image, "word")]  # fmt: skip
    base = w.path("odd-sizes")
    db = write_lmdb(base / "lmdb", items)
    done = clip("prepare", "--lmdb", db, "--out", base / "s")
    index = _index_of(base / "s")
    counted = index.get("num_samples") == 4 and index.get("skipped") == {"corrupt_image": 1}
    if done.returncode != 0 or not counted:
        return False, f"prepare rc {done.returncode}: {index.get('skipped')} {done.stderr[-100:]}"
    cached = _cache(w, base / "s", base / "store")
    trained = clip("train", "--shards", base / "s", "--teacher-store", base / "store", "--out",
                   base / "run", *TRAIN_ARGS[:4], "--max-steps", 2, *TRAIN_ARGS[6:])  # fmt: skip
    ok = cached.returncode == 0 and trained.returncode == 0
    return ok, (f"4 prepared, skipped {index['skipped']}; cache rc {cached.returncode}, "
                f"train rc {trained.returncode}")  # fmt: skip


def b_label_edge_cases(w):
    """A label over the charset's 25 symbols, an empty one and one of symbols outside the
    charset only (emoji: accents would fold to letters) are counted skips, as PARSeq filters;
    the rest is prepared."""
    image = lmdb_samples(w.lmdb, 1)[0][0]
    items = [(image, "a" * 40), (image, ""), (image, "\U0001f600\u2603"), (image, "ok")]
    base = w.path("label-edges")
    done = clip("prepare", "--lmdb", write_lmdb(base / "lmdb", items), "--out", base / "s")
    index = _index_of(base / "s")
    expected = {"label_empty": 2, "label_too_long": 1}
    ok = done.returncode == 0 and index.get("num_samples") == 1 and index["skipped"] == expected
    return ok, f"rc {done.returncode}; counted skips: {index.get('skipped')}"


def b_deleted_shard_cache(w):
    shards = _shards_copy(w, "deleted-shard-cache")
    (shards / "shard-000002.tar").unlink()
    done = _cache(w, shards, shards.parent / "store")
    return clear_error(done, "shard-000002.tar: listed in shards.json but missing")


def b_truncated_shard_cache(w):
    """Cut inside a member: that shard fails alone, by name, without retries or tracebacks."""
    shards = _shards_copy(w, "truncated-shard-cache")
    tar = shards / "shard-000002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2 + 100])
    done = _cache(w, shards, shards.parent / "store")
    ok, note = shard_failures(done, "shard-000002.tar")
    ok = ok and "Compute Failed" not in done.stderr and done.stdout.startswith("cached ")
    return ok, note


def _bad_index(w, name: str, **edit) -> Path:
    shards = _shards_copy(w, name)
    index = _index_of(shards)
    index.update(edit)
    (shards / "shards.json").write_text(json.dumps(index))
    return shards


def b_index_shape_cache(w):
    shards = _bad_index(w, "index-shape-cache", shards=3)
    return clear_error(_cache(w, shards, shards.parent / "store"), "not a shards.json")


def b_index_escape_cache(w):
    shards = _bad_index(w, "index-escape", shards=[{"name": "../x.tar", "count": 32}])
    return clear_error(_cache(w, shards, shards.parent / "store"), "not a shards.json")


def b_prepare_onto_file(w):
    target = w.path("onto-file")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("x")
    return clear_error(clip("prepare", "--lmdb", w.lmdb, "--out", target), "File exists")


def b_tsv_without_tab(w):
    folder = _folder(w, "tsv-no-tab", b"0.png\tabc\njust-a-line\n")
    return clear_error(clip("prepare", "--folder", folder, "--out", folder.parent / "s"),
                       "labels.tsv:2")  # fmt: skip


def b_tsv_missing_image(w):
    """A listed image that is not there: an error naming it, or a counted skip."""
    folder = _folder(w, "tsv-missing-image", b"0.png\tabc\n7.png\tdef\n1.png\tghi\n")
    done = clip("prepare", "--folder", folder, "--out", folder.parent / "s")
    if done.returncode == 0:
        skipped = _index_of(folder.parent / "s").get("skipped") or {}
        return sum(skipped.values()) == 1, f"rc 0; counted skip: {skipped}"
    return clear_error(done, "7.png")


def b_readonly_store(w):
    if w.readonly is None:
        return None, "skipped: cannot mount a read-only tmpfs (needs root)"
    return clear_error(_cache(w, w.shards, w.readonly / "store"), "read-only")


def b_deleted_group_verify(w):
    store = _store_copy(w, "deleted-group")
    shutil.rmtree(store / "shard-000001")
    return verify_fails(clip("cache-teacher", "--verify", store, "--shards", w.shards),
                        "shard-000001")  # fmt: skip


def b_garbage_manifest_verify(w):
    store = _store_copy(w, "garbage-manifest")
    (store / "manifest.json").write_text("{not json")
    return refused(clip("cache-teacher", "--verify", store, "--shards", w.shards))


def _flag(w, name: str, *flags: object, match: str = ""):
    return clear_error(_cache(w, w.shards, w.path(name), *flags), match)


def b_synth_bad_fonts(w):
    fonts = w.path("bad-fonts")
    fonts.mkdir(parents=True)
    (fonts / "face.ttf").write_bytes(b"not a font")
    return clear_error(clip("synth", "--out", fonts.parent / "s", "--num", 2, "--fonts", fonts))


def b_cache_onto_file(w):
    target = w.path("cache-onto-file")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("x")
    return clear_error(_cache(w, w.shards, target), "File exists")


def b_clip_model_garbage(w):
    model = w.path("model").with_suffix(".json")
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_text("{oops")
    return clear_error(clip("cache-teacher", "--shards", w.shards, "--out", w.path("s"),
                            "--clip-model", model, "--device", "cpu"), "JSON")  # fmt: skip


def b_unreachable_scheduler(w):
    """Nothing listens on port 9: one line after dask's connect timeout, not a hang."""
    return clear_error(clip("cache-teacher", "--shards", w.shards, "--out", w.path("s"),
                            *TEACHER_ARGS, "--device", "cpu", "--scheduler", "tcp://127.0.0.1:9",
                            timeout=150))  # fmt: skip


BAD_DATA = [
    ("truncated data.mdb → prepare", b_truncated_mdb_prepare),
    ("empty LMDB → prepare", b_empty_lmdb),
    ("LMDB without num-samples → prepare", b_lmdb_without_count),
    ("LMDB label with non-UTF-8 bytes (counted skip)", b_non_utf8_lmdb_label),
    ("images 1×1000, 1000×1, 1×1, 0 bytes → prepare, cache, train", b_odd_image_sizes),
    ("labels too long / empty / off-charset (counted skips)", b_label_edge_cases),
    ("labels.tsv with non-UTF-8 bytes", b_non_utf8_tsv),
    ("labels.tsv path ../outside.png", lambda w: b_tsv_escape(w, "../outside.png")),
    ("labels.tsv path /etc/hostname", lambda w: b_tsv_escape(w, "/etc/hostname")),
    ("labels.tsv line without a tab", b_tsv_without_tab),
    ("labels.tsv naming a missing image", b_tsv_missing_image),
    ("prepare resumed with another --shard-size", b_prepare_other_size),
    ("prepare --out an existing file", b_prepare_onto_file),
    ("prepare --shard-size 0", lambda w: clear_error(clip("prepare", "--lmdb", w.lmdb, "--out",
                                                          w.path("ss0"), "--shard-size", 0))),
    ("prepare --charset 99", lambda w: clear_error(clip("prepare", "--lmdb", w.lmdb, "--out",
                                                        w.path("cs"), "--charset", 99))),
    ("prepare from a missing folder", lambda w: clear_error(clip("prepare", "--lmdb",
                                                                 w.path("nothing"), "--out",
                                                                 w.path("o")))),
    ("synth --out an existing LMDB", lambda w: clear_error(clip("synth", "--out", w.lmdb,
                                                                "--num", 2))),
    ("synth --num 0", lambda w: clear_error(clip("synth", "--out", w.path("s0"), "--num", 0))),
    ("synth --style bogus", lambda w: clear_error(clip("synth", "--out", w.path("sb"), "--num",
                                                       2, "--style", "bogus"))),
    ("synth --fonts a folder of non-fonts", b_synth_bad_fonts),
    ("shard deleted after prepare → cache-teacher", b_deleted_shard_cache),
    ("truncated shard → cache-teacher (fails alone)", b_truncated_shard_cache),
    ("shards.json of the wrong shape → cache-teacher", b_index_shape_cache),
    ("shards.json naming ../x.tar → cache-teacher", b_index_escape_cache),
    ("store on a read-only folder → cache-teacher", b_readonly_store),
    ("cache-teacher --out an existing file", b_cache_onto_file),
    ("cache-teacher --clip-pretrained missing",
     lambda w: clear_error(clip("cache-teacher", "--shards", w.shards, "--out", w.path("s"),
                                "--clip-model", TEACHER / "teacher.json", "--clip-pretrained",
                                w.path("missing.safetensors")))),
    ("cache-teacher --clip-model not JSON", b_clip_model_garbage),
    ("cache-teacher --codec bogus",
     lambda w: clear_error(clip("cache-teacher", "--shards", w.shards, "--out", w.path("s"),
                                *TEACHER_ARGS, "--codec", "bogus"))),
    ("cache-teacher --batch-size 0",
     lambda w: _flag(w, "bs0", "--batch-size", 0, match="--batch-size 0")),
    ("cache-teacher --precision fp8",
     lambda w: _flag(w, "fp8", "--precision", "fp8", match="--precision fp8")),
    ("cache-teacher --scheduler an unreachable address", b_unreachable_scheduler),
    ("cache-teacher --verify a non-store",
     lambda w: refused(clip("cache-teacher", "--verify", w.shards))),
    ("corrupted chunk + --verify", b_corrupt_chunk_verify),
    ("deleted chunk + --verify", b_deleted_chunk_verify),
    ("deleted group folder + --verify", b_deleted_group_verify),
    ("manifest not JSON + --verify", b_garbage_manifest_verify),
    ("store of other shards + --verify --shards", b_other_shards_verify),
    ("manifest with edited dims + --verify", b_edited_dims_verify),
]  # fmt: skip
