"""`TeacherStore.verify`: check every group of a store and list problems instead of raising.

Per group: complete; counts against ``shards.json``; keys unique, of this shard, not also
missing; every array at the shape its counts give with all its chunk files present (a missing
chunk reads as zeros); every chunk decoded, which checks its CRC32C, and scanned for NaN/Inf;
and, given the shard folder, the source shard's SHA-256 against the one recorded at caching.

In the ``table`` text layout, also every complete part of the text table (shapes, chunks,
checksums, NaN/Inf, once each) and every sample's reference into it.

Groups cached before checksums or source digests existed cannot have those checked: they are
listed (``unchecksummed``, ``unsourced``) and noted in the printed report, not failed, so old
stores stay usable; everything else is still checked for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from clipocr.pipeline.teacher_store.integrity import (
    array_problems,
    expected_shapes,
    unchecksummed,
)
from clipocr.pipeline.teacher_store.location import TMP_PREFIX, group_attrs
from clipocr.pipeline.teacher_store.ownership import is_abandoned
from clipocr.pipeline.teacher_store.sources import SOURCE_ATTR, compare
from clipocr.pipeline.teacher_store.spec import (
    STAGES_IMAGE,
    STAGES_TEXT,
    TABLE_DIR,
    shard_group_name,
)
from clipocr.pipeline.teacher_store.store_view import StoreView
from clipocr.pipeline.teacher_store.table_parts import complete_parts
from clipocr.pipeline.teacher_store.text_table import check_part


def verify_store(
    store: StoreView, shard_index: dict | None = None, shard_dir: str | Path | None = None
) -> dict:
    """A report (``ok``, per-shard problems, bytes/sample) on every group of `store`.

    With `shard_index` (``shards.json``, see `clipocr.pipeline.shards.load_index`) also checks
    that every listed shard is cached and that stored + missing counts match it; with
    `shard_dir` (the folder of that ``shards.json``) also that each group was cached from the
    shard file there (full SHA-256).
    """
    loc, spec = store.loc, store.spec
    problems: list[str] = []
    groups: dict[str, dict] = {}
    stale, in_progress = [], []
    for d in loc.dirs():
        if d.startswith(TMP_PREFIX):
            (stale if is_abandoned(loc, d) else in_progress).append(d)
            continue
        attrs = group_attrs(loc, d)
        if attrs is not None:
            groups[d] = attrs
    expected: dict[str, int] | None = None
    if shard_index is not None:
        expected = {shard_group_name(s["name"]): int(s["count"]) for s in shard_index["shards"]}
        if shard_index.get("charset", spec.charset) != spec.charset:
            theirs = shard_index["charset"]
            problems.append(f"charset: store {spec.charset!r} != shards.json {theirs!r}")
        for name in expected:
            if name not in groups:
                problems.append(f"{name}: listed in shards.json but not in the store")
    parts: dict[int, int] = {}
    if spec.text_layout == "table":
        parts = _verify_table(store, problems)
    shards = {}
    for name, attrs in groups.items():
        want = None if expected is None else expected.get(name)
        rep = _verify_group(store, name, attrs, want, parts)
        if expected is not None and name not in expected:
            rep["problems"].append("not listed in shards.json")
        if shard_dir is not None and rep["complete"]:
            _check_source(Path(shard_dir), name, attrs, rep)
        shards[name] = rep
        problems += [f"{name}: {p}" for p in rep["problems"]]
    complete = {n: r for n, r in shards.items() if r["complete"]}
    num = sum(r["count"] for r in complete.values())
    total = sum(r["nbytes"] for r in complete.values())
    table_bytes = store.nbytes(TABLE_DIR) if parts else 0
    total += table_bytes
    return {
        "ok": not problems,
        "root": store.root,
        "codec": spec.codec,
        "form": spec.form,
        "views": spec.view_count,
        "num_shards": len(complete),
        "num_samples": num,
        "nbytes": total,
        "bytes_per_sample": total / num if num else None,
        "text_table": {"parts": len(parts), "labels": sum(parts.values()), "nbytes": table_bytes},
        "shards": shards,
        "stale_temporary_groups": stale,
        "temporary_groups_in_progress": in_progress,
        "unchecksummed": sorted(n for n, r in complete.items() if r.get("unchecksummed")),
        "unsourced": sorted(n for n, r in complete.items() if r.get("unsourced")),
        "problems": problems,
    }


def _check_source(shard_dir: Path, name: str, attrs: dict, rep: dict) -> None:
    recorded = attrs.get(SOURCE_ATTR)
    if recorded is None:
        rep["unsourced"] = True
        return
    path = shard_dir / recorded.get("file", f"{name}.tar")
    why = compare(recorded, path, thorough=True)
    if why is not None:
        rep["problems"].append(f"cached from another source shard: {why}")


def _verify_table(store: StoreView, problems: list[str]) -> dict[int, int]:
    """Check every complete text-table part once, a chunk at a time; returns part → labels."""
    attrs = complete_parts(store.loc)
    for number, part in attrs.items():
        problems += check_part(store.loc, number, part, store.spec.taps, store.codec)
    return {n: int(a["count"]) for n, a in attrs.items()}


def _verify_group(
    store: StoreView, name: str, attrs: dict, expected: int | None, parts: dict[int, int]
) -> dict:
    rep: dict[str, Any] = {
        "complete": bool(attrs.get("complete")),
        "count": int(attrs.get("count", 0)),
        "expected": expected,
        "missing": len(attrs.get("missing", [])),
        "nbytes": store.nbytes(name),
        "problems": [],
    }
    if not rep["complete"]:
        rep["problems"].append("incomplete (writer did not finish)")
        return rep
    try:
        _check_group(store, name, attrs, rep, parts)
    except Exception as err:  # any unreadable part is a finding, not a crash
        rep["problems"].append(f"unreadable: {type(err).__name__}: {err}")
    return rep


def _check_group(
    store: StoreView, name: str, attrs: dict, rep: dict, parts: dict[int, int]
) -> None:
    probs = rep["problems"]
    count, missing = rep["count"], list(attrs.get("missing", []))
    if rep["expected"] is not None and count + len(missing) != rep["expected"]:
        probs.append(f"count {count} + {len(missing)} missing != {rep['expected']} in shards.json")
    group = zarr.open_group(store.loc.child(name), mode="r")
    keys = group["keys"][:].tolist()
    readable = len(keys) == count  # the arrays fit together, so the data can be scanned
    if not readable:
        probs.append(f"keys: {len(keys)} stored, count says {count}")
    if len(set(keys)) != len(keys):
        probs.append("keys: duplicates")
    if any(not k.startswith(f"{name}/") for k in keys):
        probs.append(f"keys: some do not start with {name}/")
    if set(keys) & set(missing):
        probs.append("keys: some are also listed as missing")
    spec, codec = store.spec, store.codec
    rows = int(attrs.get("text_rows", -1))
    table = spec.text_layout == "table"
    shapes = expected_shapes(spec.taps, spec.dims, codec, count, rows, spec.text_layout,
                             spec.view_count)  # fmt: skip
    if "text_ref" in shapes:
        refs = group["text_ref"][:]
        limit = np.array([parts.get(int(p), 0) for p in refs[:, 0]], np.int64)
        if refs.shape != (count, 2) or np.any(refs[:, 1] < 0) or np.any(refs[:, 1] >= limit):
            readable = False
            probs.append("text_ref: references rows absent from the text table")
    if not table and any(t in STAGES_TEXT for t in spec.taps):
        offsets = group["text_offsets"][:]
        if offsets.shape != (count + 1,) or offsets[0] != 0 or offsets[-1] != rows:
            readable = False
            probs.append(
                f"text_offsets: shape {offsets.shape} or its ends do not fit {count} samples, "
                f"{rows} rows"
            )
        elif np.any(np.diff(offsets) < 1):
            probs.append("text_offsets: a sample has no text rows")
    layout = array_problems(group, shapes)
    probs += [p for p in layout if not p.startswith("keys:") or readable]
    rep["unchecksummed"] = bool(unchecksummed(group, list(shapes)))
    if not readable or layout:
        return
    bad: dict[str, int] = {}
    scanned = store.group_taps()  # the table's taps were scanned once, above
    for view in range(spec.view_count):
        for _, block in store.iter_group_chunks(name, view):  # decoding checks each CRC32C
            for tap in scanned if view == 0 else [t for t in scanned if t in STAGES_IMAGE]:
                n = int(block[tap].size - np.isfinite(block[tap]).sum())
                if n:
                    name_v = store.tap_array(tap, view)
                    bad[name_v] = bad.get(name_v, 0) + n
    for tap, n in bad.items():
        probs.append(f"{tap}: {n} NaN/Inf values")


def format_verify_report(report: dict) -> str:
    """A short human-readable summary of `TeacherStore.verify`'s report."""
    bps = report["bytes_per_sample"]
    lines = [
        f"{report['root']}: {report['num_shards']} complete shard(s), {report['num_samples']} "
        f"samples, {report['nbytes'] / 1e6:.1f} MB"
        + (f", {bps / 1e3:.1f} KB/sample" if bps else "")
        + f" (codec {report['codec']}, form {report['form']}"
        + (f", {report['views']} cached views per sample)" if report.get("views", 1) > 1 else ")")
    ]
    table = report.get("text_table") or {}
    if table.get("parts"):
        lines.append(
            f"text table: {table['labels']} labels in {table['parts']} part(s), "
            f"{table['nbytes'] / 1e6:.1f} MB (counted in the bytes/sample above)"
        )
    if report["stale_temporary_groups"]:
        lines.append(
            f"{len(report['stale_temporary_groups'])} leftover temporary group(s) of writers that "
            "are gone, ignored (the next cache-teacher run removes them)"
        )
    if report.get("temporary_groups_in_progress"):
        lines.append(
            f"{len(report['temporary_groups_in_progress'])} group(s) being written by a live "
            "cache-teacher run"
        )
    if report.get("unchecksummed"):
        lines.append(
            f"NOTE no chunk checksums recorded in {len(report['unchecksummed'])} group(s) "
            "(cached by an older version): damage inside their chunks cannot be detected"
        )
    if report.get("unsourced"):
        lines.append(
            f"NOTE no source digests recorded in {len(report['unsourced'])} group(s) (cached by "
            "an older version): cannot check they were cached from these shards"
        )
    lines += [f"PROBLEM {p}" for p in report["problems"]]
    lines.append("OK" if report["ok"] else f"FAILED: {len(report['problems'])} problem(s)")
    return "\n".join(lines)
