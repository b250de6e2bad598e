"""The teacher store: cached CLIP stage features, the one contract between caching and training.

This package owns the store format (DESIGN §5): what is written where, how features are encoded,
and how a store is checked against the teacher that fills it and the student that reads it. Like
the rest of `pipeline` it imports no other clipocr package (nor open_clip or torch): the trainer
reads stores without loading the teacher's code. Its modules, bottom up:

* `codecs` — float32 features ↔ stored float16 / int8 arrays (`parse_codec`, `Codec`);
* `location` — a local folder or an fsspec URL, and the temporary-group naming;
* `spec` — layout constants, `StoreSpec` (the store's identity) and ``manifest.json``;
* `ownership` — which writer owns an unpublished group, and when that writer is gone;
* `integrity` — every array at its counted rows, every chunk present and checksummed;
* `sources` — the digest of the source shard a group was cached from (`shard_digest`);
* `streams` — a group's arrays read a chunk at a time, compact per-sample copies, skips;
* `table_parts` — the text table's parts on storage and the label index (kept per process);
* `group_writer` — what every group writer shares: preallocated arrays, taps encoded in parallel;
* `table_writer` — `TablePartWriter` writes one part of the label-keyed text table;
* `writer` — `TeacherStoreWriter` creates a store, `ShardGroupWriter` fills one shard's group;
* `table_flat` — a table part unpacked once per node and memory-mapped by every reader;
* `text_table` — `TextTable`, the read side of the table (``table`` text layout);
* `store_view` — `StoreView`: manifest, groups and their arrays, checked, for any reader;
* `verify` — `TeacherStore.verify`'s full check, and `format_verify_report`;
* `reader` — `TeacherStore` lists and streams groups, checks their sources.

Layout::

    ROOT/manifest.json        teacher fingerprint, written once when the store is created
    ROOT/zarr.json            the root Zarr group (so Zarr tools can open the store)
    ROOT/__text_table/part-000000/   text layout "table": text taps once per distinct label
                              (see `text_table`)
    ROOT/shard-000000/        one Zarr group per source shard, named after the shard file stem
        keys          (n,)        str      sample keys "<shard>/<index>", in shard order
        image_s1..3   (n, N, D)   float16 | int8
        text_ref      (n, 2)      int32    "table" layout: (table part, row) of the label
        text_offsets  (n+1,)      int64    "ragged": sample i owns rows offsets[i]:offsets[i+1]
        text_s1..3    (T, D)      float16 | int8   "ragged": L+1 rows per sample (c1..cL, EOT)
        text_emb      (n, E)      float16 | int8   "ragged" layout
        <tap>_scale   (n, N) / (T,) / (n,) float32   int codecs: one scale per token row
        <tap>_chscale (D,)        float32  int "-channel" codecs: the shard's channel scales

Every chunk ends with a CRC32C (checked on every read), and each group records the digest of
the source shard it was cached from in its ``source`` attribute (see `integrity`, `sources`).

Why per-shard groups: caching runs one task per shard on many workers, so each group has exactly
one writer and no chunk is ever shared. Counts live in each group's attributes (``count``,
``missing``, ``complete``) rather than in the manifest, so concurrent workers never rewrite a
shared file; `TeacherStore.shards` lists the groups. How a group becomes visible atomically is
told in `writer`.

The ``form`` recorded in the manifest says whether features were stored per-token normalised
(LayerNorm without affine, DESIGN §5) or raw; the teacher side normalises before appending.
"""

from clipocr.pipeline.teacher_store.codecs import CODECS, Codec, parse_codec
from clipocr.pipeline.teacher_store.location import TMP_PREFIX
from clipocr.pipeline.teacher_store.reader import TeacherStore
from clipocr.pipeline.teacher_store.sources import shard_digest
from clipocr.pipeline.teacher_store.spec import (
    ALL_TAPS,
    DEFAULT_CHUNK_SAMPLES,
    FORMS,
    INDEX_CHUNK,
    MANIFEST_NAME,
    STAGES_IMAGE,
    STAGES_TEXT,
    STORE_FORMAT,
    TEXT_EMB,
    TEXT_LAYOUTS,
    TEXT_PADS,
    TEXT_ROWS_PER_SAMPLE,
    StoreSpec,
    shard_group_name,
)
from clipocr.pipeline.teacher_store.table_writer import TablePartWriter, open_table_part
from clipocr.pipeline.teacher_store.verify import format_verify_report
from clipocr.pipeline.teacher_store.writer import ShardGroupWriter, TeacherStoreWriter

__all__ = [
    "ALL_TAPS",
    "CODECS",
    "DEFAULT_CHUNK_SAMPLES",
    "FORMS",
    "INDEX_CHUNK",
    "MANIFEST_NAME",
    "STAGES_IMAGE",
    "STAGES_TEXT",
    "STORE_FORMAT",
    "TEXT_EMB",
    "TEXT_LAYOUTS",
    "TEXT_PADS",
    "TEXT_ROWS_PER_SAMPLE",
    "TMP_PREFIX",
    "Codec",
    "ShardGroupWriter",
    "StoreSpec",
    "TablePartWriter",
    "TeacherStore",
    "TeacherStoreWriter",
    "format_verify_report",
    "open_table_part",
    "parse_codec",
    "shard_digest",
    "shard_group_name",
]
