"""A labelled image folder as a community STR LMDB: what ``clipocr lmdb FOLDER OUT`` writes.

The format is the one every benchmark set is shared in and PARSeq's `create_lmdb_dataset.py`
writes: keys ``image-%09d`` (the image file's bytes, untouched) and ``label-%09d`` (the label as
listed, UTF-8) numbered from 1, and ``num-samples``. As there, an image that cannot be decoded is
left out (with a warning naming it) rather than shipped to be scored as a read error everywhere;
the folder's listing is read as `prepare --folder` reads it (`ImageFolderSource`: bad lines
refused, duplicate rows skipped, conflicting ones refused). Labels are not prepared: a test set
keeps its raw labels, and each evaluator applies its own protocol.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from clipocr.pipeline.errors import InputError
from clipocr.pipeline.lmdb_io import SKIP_CORRUPT_IMAGE, LmdbWriter
from clipocr.pipeline.preprocess import decode_image
from clipocr.pipeline.sources import ImageFolderSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderLmdb:
    """What `folder_to_lmdb` wrote: sample count and the records left out, by reason."""

    out: Path
    num_samples: int
    skipped: dict[str, int] = field(default_factory=dict)


def folder_to_lmdb(folder: str | Path, out: str | Path, progress: bool = True) -> FolderLmdb:
    """Write the samples of a labelled image folder into a new STR LMDB at `out`.

    The LMDB appears only when complete (`LmdbWriter`); `out` must not exist."""
    source = ImageFolderSource(folder)
    out = Path(out)
    if out.exists():
        raise InputError(f"{out}: already exists; remove it or choose another OUT")
    skipped: Counter[str] = Counter()
    with (
        LmdbWriter(out) as writer,
        tqdm(total=len(source), desc="lmdb", unit="img", disable=not progress) as bar,
    ):
        for number, data, label in source.iter_raw():
            bar.update(1)
            try:
                decode_image(data)
            except Exception as err:  # PIL raises many types on corrupt data
                skipped[SKIP_CORRUPT_IMAGE] += 1
                rel = source.entries[number - 1][1]
                log.warning("%s: %s left out (not a decodable image: %s)", source.root, rel, err)
                continue
            writer.add(data, label)
        if writer.count == 0:
            raise InputError(f"{source.labels_path}: no listed image could be read")
    skipped.update(source.skipped)
    return FolderLmdb(out, writer.count, dict(sorted(skipped.items())))
