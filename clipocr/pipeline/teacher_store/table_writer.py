"""Writing the text table: one immutable part at a time (`TablePartWriter`, `open_table_part`).

The caching driver collects the distinct labels of the shards to cache, writes one part for the
labels the table lacks (one writer, nothing shared) and only then starts the shard tasks, which
only read the table. A later run with new labels adds a part; a part is never changed, so
references stay valid. Parts are published like shard groups (temporary name, then an
exclusive rename; the ``complete`` flag on object stores). The arrays of a part are described
in `text_table`.
"""

from __future__ import annotations

import numpy as np

from clipocr.pipeline.teacher_store.group_writer import GroupWriter, StoreHandle
from clipocr.pipeline.teacher_store.integrity import INDEX_COMPRESSOR, table_shapes
from clipocr.pipeline.teacher_store.spec import INDEX_CHUNK, STAGES_TEXT, TABLE_DIR
from clipocr.pipeline.teacher_store.table_parts import (
    TABLE_CHUNK,
    complete_parts,
    part_name,
    part_path,
    table_taps,
)


class TablePartWriter(GroupWriter):
    """Writes one immutable part of the text table; `commit` publishes it under the next free
    part number. Open it with `open_table_part` from the caching driver (one writer at a time)."""

    def __init__(self, store: StoreHandle, positions: int, expected: int) -> None:
        taken = complete_parts(store.loc)
        self.number = max(taken, default=-1) + 1
        super().__init__(store, TABLE_DIR, part_name(self.number), {"positions": positions},
                         expected)  # fmt: skip
        self.taps = table_taps(store.spec.taps)
        self.dims = store.spec.dims
        self.positions = int(positions)
        n = max(self.expected or TABLE_CHUNK, 1)
        self.new_array("labels", (), INDEX_CHUNK, str, INDEX_COMPRESSOR, n)
        for tap in self.taps:
            row = (positions, self.dims["text"]) if tap in STAGES_TEXT else (self.dims["emb"],)
            self.new_tap(tap, row, TABLE_CHUNK, n)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return table_shapes(self.taps, self.dims, self.codec, self.count, self.positions)

    def append(self, labels: list[str], feats: dict[str, np.ndarray]) -> None:
        """Add labels and their features: ``text_s*`` ``(b, P, D)`` at every position, with rows
        past each label's EOT already as the store's ``text_pad`` wants them, ``text_emb``."""
        b = len(labels)
        if set(feats) - {"text_lengths"} != set(self.taps):
            raise ValueError(f"table part: feats keys {sorted(feats)} ≠ taps {list(self.taps)}")
        rows = {}
        for tap in self.taps:
            x = np.asarray(feats[tap])
            if x.dtype not in (np.float16, np.float32):
                x = x.astype(self.codec.input_dtype)
            want = (b, self.positions, self.dims["text"]) if tap in STAGES_TEXT else (
                b, self.dims["emb"])  # fmt: skip
            if x.shape != want:
                raise ValueError(f"table part {tap}: shape {x.shape}, expected {want}")
            rows[tap] = x
        if not b:
            return
        self.write_taps(rows, self.count)
        self._app["labels"].append(np.asarray(labels, dtype=str))
        self.count += b

    def commit(self) -> int:
        """Check and publish the part; returns its number (which `publish` may have moved on)."""
        self.finish({})
        return self.number

    def publish(self) -> None:
        loc = self.store.loc
        while True:
            try:
                loc.rename(self._dir, part_path(self.number))
                return
            except OSError:  # another run published this number first: take the next one
                if self.number not in complete_parts(loc):
                    raise
                self.number += 1


def open_table_part(store: StoreHandle, positions: int, expected: int) -> TablePartWriter:
    """A writer for the next part of `store`'s text table (`positions` rows per label)."""
    return TablePartWriter(store, positions, expected)
