"""Render a `Report`: the stdout table, the JSON file, the predictions TSV and a PNG grid.

All four read the same `Report` methods (`rows`, `combined`, `scored`), so the numbers in the
table, the JSON and the TSV agree by construction — a test recomputes the table from the TSV.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from clipocr.evaluate.datasets import (
    COMBINED,
    EXPECTED_SAMPLES,
    GROUP_COMMON,
    GROUP_HARD,
    GROUP_OTHER,
    open_test_set,
)
from clipocr.evaluate.metrics import Score
from clipocr.evaluate.results import PROTOCOL_CHARSET, Report, Row, Sample, Speed
from clipocr.pipeline.charset import REASON_EMPTY, REASON_TOO_LONG, Charset
from clipocr.pipeline.preprocess import decode_image

AVERAGE_MEMBERS = {w: "/".join(m for m in COMBINED[w] if m[:2] == "IC") for w in COMBINED}
_SECTIONS = (
    (GROUP_COMMON, "common benchmarks"),
    (GROUP_HARD, "harder sets"),
    (GROUP_OTHER, "other test sets"),
)
TSV_COLUMNS = ("key", "label", "prediction", "confidence", "correct", "charset", "error")
# Why a label is dropped, as the table says it (`Charset.prepare`'s reasons).
DROP_WORDS = {
    REASON_TOO_LONG: "longer than {max_len} characters",
    REASON_EMPTY: "with no symbol of the charset",
}


def _row_dict(row: Row) -> dict[str, Any]:
    t = row.tally
    out = {
        "name": row.name,
        "samples": t.samples,
        "correct": t.correct,
        "accuracy": round(t.accuracy, 4),
        "one_minus_ned": round(t.one_minus_ned, 4),
        "confidence": round(t.confidence, 4),
        "unreadable": row.unreadable,
        "dropped_labels": row.dropped,
        "dropped_reasons": {reason: n for reason, n, _ in row.drop_reasons},
    }
    if row.members:
        out["members"] = list(row.members)
        out["missing"] = list(row.missing)
    return out


def _example(label: str, limit: int = 20) -> str:
    """A label quoted for a table line, cut (with its length) when long."""
    if len(label) <= limit:
        return repr(label)
    return f"{label[:limit] + '...'!r} ({len(label)} chars)"


def why_empty(row: Row, max_len: int) -> str:
    """Beside a row that scored no sample: every label dropped, and why (with an example), or
    that the set held nothing to score. Empty for a row that scored samples."""
    if row.samples or row.members:
        return ""
    if not row.dropped:
        return "  (no labelled sample)"
    parts = [
        f"{n} {DROP_WORDS.get(reason, reason).format(max_len=max_len)}, e.g. {_example(example)}"
        for reason, n, example in row.drop_reasons
    ]
    return f"  (all {row.dropped} labels dropped: {'; '.join(parts)})"


def _line(name: str, row: Row, width: int, max_len: int = 25) -> str:
    flag = "" if row.complete else "  (missing " + ", ".join(row.missing) + ")"
    flag += why_empty(row, max_len)
    return (
        f"{name:<{width}s}{row.samples:>8d}{row.accuracy:>10.2f}{row.one_minus_ned:>9.2f}"
        f"{row.confidence:>12.2f}{flag}"
    )


def table_text(report: Report, charset: str, average: str = "sub") -> str:
    """The per-dataset table for one test charset, its Combined rows and the headline average.

    The Combined row of the other IC13/IC15 versions is shown only when it differs, i.e. when
    one of those versions was evaluated."""
    rows = report.rows_for(charset)
    pairs = list(zip(rows, report.datasets, strict=True))
    by_group = {g: [r for r, d in pairs if d.group == g] for g, _ in _SECTIONS}
    head = report.combined(average, charset)
    combined = [
        (f"Combined ({AVERAGE_MEMBERS[w]})", row)
        for w in COMBINED
        if (row := report.combined(w, charset)) is not None
        and (w == average or head is None or row.members != head.members)
    ]
    width = max([24, *(len(r.name) + 2 for r in rows), *(len(n) + 2 for n, _ in combined)])
    title = (
        "36-symbol protocol (case-folded, 0-9a-z)"
        if charset == PROTOCOL_CHARSET
        else Charset.from_spec(charset, report.max_len).describe()
    )
    lines = [
        f"== {title}",
        f"{'dataset':<{width}s}{'samples':>8s}{'accuracy':>10s}{'1-NED':>9s}{'confidence':>12s}",
    ]
    for group, heading in _SECTIONS:
        if not by_group[group]:
            continue
        lines.append(f"-- {heading}")
        lines += [_line(r.name, r, width, report.max_len) for r in by_group[group]]
        if group == GROUP_COMMON:
            lines += [_line(name, row, width) for name, row in combined]
    if head is not None:
        lines.append(
            f"weighted average ({AVERAGE_MEMBERS[average]} set) over {len(head.members)} of "
            f"{len(COMBINED[average])} benchmarks: {head.accuracy:.2f} % of {head.samples} samples"
            + ("" if head.complete else " (incomplete: not comparable to published figures)")
        )
    return "\n".join(lines)


def notes_text(report: Report) -> list[str]:
    """Problems found in the data: unreadable images (scored wrong) and unlabelled records."""
    notes = []
    errors = report.errors
    if errors:
        shown = ", ".join(f"{s.key} ({s.error})" for s in errors[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        notes.append(f"{len(errors)} unreadable image(s), scored as wrong: {shown}{more}")
    for name, count in report.unlabelled.items():
        notes.append(f"{name}: {count} record(s) without a label, not scored")
    if report.limit is None:
        for row in report.rows:
            expected = EXPECTED_SAMPLES.get(row.name)
            if expected is not None and row.samples != expected:
                notes.append(
                    f"{row.name}: {row.samples} samples scored, the standard set has "
                    f"{expected}: figures are not comparable to published ones"
                )
    return notes


def speed_text(speed: Speed) -> str:
    plural = "" if speed.threads == 1 else "s"
    where = (
        speed.device if speed.device.startswith("cuda") else f"cpu, {speed.threads} thread{plural}"
    )
    return (
        f"speed ({where}, greedy decoding): {speed.ms_per_image:.2f} ms/image at batch 1; "
        f"{speed.images_per_s:.1f} images/s at batch {speed.batch_size}"
    )


def to_json(
    report: Report,
    average: str,
    config: dict[str, Any],
    checkpoint: str,
    speed: Speed | None,
) -> dict[str, Any]:
    """The same numbers as the table, plus the checkpoint's config, for scripts and papers."""
    results = {}
    for cs in report.charsets:
        head = report.combined(average, cs)
        results[cs] = {
            "datasets": [
                {**_row_dict(r), "group": d.group, "path": str(d.path)}
                for r, d in zip(report.rows_for(cs), report.datasets, strict=True)
            ],
            "combined": {
                w: _row_dict(row) for w in COMBINED if (row := report.combined(w, cs)) is not None
            },
            "weighted_average": None
            if head is None
            else {
                "members": list(head.members),
                "accuracy": round(head.accuracy, 4),
                "samples": head.samples,
                "missing": list(head.missing),
            },
        }
    return {
        "checkpoint": checkpoint,
        "config": config,
        "protocol": {
            "charsets": list(report.charsets),
            "max_label_length": report.max_len,
            "average": average,
            "limit_per_dataset": report.limit,
        },
        "device": report.device,
        "batch_size": report.batch_size,
        "results": results,
        "unreadable": [{"key": s.key, "error": s.error} for s in report.errors],
        "unlabelled": report.unlabelled,
        "speed": None if speed is None else asdict(speed),
    }


def write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_predictions(report: Report, path: Path) -> int:
    """One line per scored (sample, charset): the prepared label and filtered prediction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="") as f:
        out = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        out.writerow(TSV_COLUMNS)
        for cs in report.charsets:
            for s, sc in report.scored(cs):
                out.writerow(
                    (s.key, sc.label, sc.prediction, f"{s.confidence:.6f}", int(sc.correct), cs,
                     s.error)
                )  # fmt: skip
                count += 1
    return count


def _pick(scored: list[tuple[Sample, Score]], n: int) -> list[tuple[Sample, Score]]:
    """Up to `n` samples, half of them wrong when there are that many (a grid of only right or
    only wrong readings says little), kept in evaluation order."""
    wrong = [p for p in scored if not p[1].correct]
    right = [p for p in scored if p[1].correct]
    k_wrong = min(len(wrong), max(n // 2, n - len(right)))
    chosen = {id(p) for p in wrong[:k_wrong] + right[: n - k_wrong]}
    return [p for p in scored if id(p) in chosen]


def _images(report: Report, samples: list[Sample]) -> dict[str, Image.Image]:
    """The images of `samples` by key, read back from their LMDBs in one pass each; an
    unreadable one becomes a grey tile saying so."""
    out: dict[str, Image.Image] = {}
    wanted: dict[str, set[int]] = {}
    for s in samples:
        if s.error:
            tile = Image.new("RGB", (128, 32), (200, 200, 200))
            ImageDraw.Draw(tile).text((4, 10), "unreadable", fill=(0, 0, 0))
            out[s.key] = tile
        else:
            wanted.setdefault(s.dataset, set()).add(s.index)
    for d in report.datasets:
        need = wanted.get(d.name)
        if not need:
            continue
        reader = open_test_set(d)
        try:
            for index, data, _ in reader.iter_raw(skip_bad=False):
                if index in need:
                    out[f"{d.name}/{index}"] = decode_image(data)
                    need.discard(index)
                    if not need:
                        break
        finally:
            reader.close()
    return out


def write_grid(report: Report, path: Path, n: int = 24, columns: int = 4) -> int:
    """PNG grid of test images with prediction over label, the prediction red when wrong.

    Returns the number of images drawn."""
    picked = _pick(report.scored(), n)
    if not picked:
        return 0
    images = _images(report, [s for s, _ in picked])
    cell_w, img_h, text_h = 256, 64, 40
    rows = (len(picked) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell_w, rows * (img_h + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=15)
    for i, (s, sc) in enumerate(picked):
        x, y = (i % columns) * cell_w, (i // columns) * (img_h + text_h)
        grid.paste(images[s.key].resize((cell_w - 8, img_h - 4), Image.BICUBIC), (x + 4, y + 2))
        colour = (0, 120, 0) if sc.correct else (200, 0, 0)
        draw.text((x + 6, y + img_h), sc.prediction or "(empty)", fill=colour, font=font)
        draw.text((x + 6, y + img_h + 18), f"gt: {sc.label}", fill=(90, 90, 90), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return len(picked)
