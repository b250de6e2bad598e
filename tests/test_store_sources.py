"""Source digests: quick and full comparisons of a shard file with the recorded one."""

from __future__ import annotations

from pathlib import Path

from clipocr.pipeline.teacher_store.sources import SAMPLE_BYTES, compare, shard_digest


def test_compare_quick_and_thorough(tmp_path: Path) -> None:
    path = tmp_path / "shard-000000.tar"
    data = bytearray(b"abcdefgh" * (SAMPLE_BYTES // 2))  # four sampled ends' worth
    path.write_bytes(bytes(data))
    rec = shard_digest(path)
    assert rec["file"] == path.name and rec["bytes"] == len(data)
    assert compare(rec, path, thorough=True) is None
    data[len(data) // 2] ^= 1  # the middle: outside the sampled ends
    path.write_bytes(bytes(data))
    assert compare(rec, path, thorough=False) is None
    assert "SHA-256 differs" in compare(rec, path, thorough=True)
    data[0] ^= 1
    path.write_bytes(bytes(data))
    assert "content differs" in compare(rec, path, thorough=False)
    path.write_bytes(bytes(data[:-1]))
    assert "bytes" in compare(rec, path, thorough=False)
    assert "unreadable" in compare(rec, tmp_path / "absent.tar", thorough=False)
