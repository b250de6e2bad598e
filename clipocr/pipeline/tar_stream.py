"""One streaming pass over a shard's tar file: each member's name and bytes, in stored order.

Why not `tarfile` (which webdataset uses): it parses every 512-byte header in Python objects,
≈ 25 µs a member and two members a sample, in the one process that also feeds the GPU when
caching (`bench/bench_pipeline.py` measures both). A tar is a sequence of members, each a
512-byte header, its data and zero padding to a multiple of 512, ended by zero blocks; the
shards `prepare` writes are plain ustar (webdataset's writer with a fixed integer mtime). This
reader parses exactly that, plus the two extensions other writers use for long names (a POSIX
pax ``path`` record, GNU's ``././@LongLink``), so shards written by other tools read the same.
Each header's checksum is checked: a truncated or corrupt shard is an `InputError` naming the
file and the byte offset, never a garbled sample. Compressed tars are not read (shards never are).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from clipocr.pipeline.errors import InputError

BLOCK = 512
_ZERO = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
_POSIX_MAGIC = b"ustar\x0000"
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (``__key__`` etc.)


def _number(field: bytes) -> int:
    """A numeric header field: octal ASCII (NUL/space padded), or base-256 when the high bit is
    set (GNU's form for sizes of 8 GiB and more)."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] & 0x40 else value
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _checksum_ok(header: bytes) -> bool:
    """The stored checksum is the byte sum of the header with its own field read as spaces;
    old writers summed signed bytes, which tarfile accepts too."""
    try:
        stored = _number(header[148:156])
    except ValueError:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    signed = unsigned - 256 * sum(1 for b in header if b & 0x80)
    signed += 256 * sum(1 for b in header[148:156] if b & 0x80)
    return stored == signed


def _name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:265] == _POSIX_MAGIC:
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (records are ``"<len> key=value\\n"``)."""
    path = None
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def iter_tar_files(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, data)`` for each regular file of the tar at `path`, reading it once, front
    to back, without an index: directories, links and metadata members are passed over."""
    offset = 0
    long_name: str | None = None
    with open(path, "rb", buffering=1 << 20) as f:
        while True:
            header = f.read(BLOCK)
            if not header or header == _ZERO:
                return  # end of archive (a missing end marker is tolerated, as tarfile does)
            if len(header) < BLOCK or not _checksum_ok(header):
                what = "truncated header" if len(header) < BLOCK else "bad header checksum"
                raise InputError(f"{path}: not a valid tar at byte {offset} ({what})")
            size = _number(header[124:136])
            kind = header[156:157]
            data = f.read(size)
            if len(data) < size:
                raise InputError(
                    f"{path}: truncated at byte {offset} (member holds {len(data)} of {size} "
                    "bytes); re-create the shard"
                )
            pad = -size % BLOCK
            if pad:
                f.seek(pad, 1)
            offset += BLOCK + size + pad
            if kind in _REGULAR:
                yield long_name or _name(header), data
                long_name = None
            elif kind == b"x":
                long_name = _pax_path(data) or long_name
            elif kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind != b"g":  # a global pax header applies to all members, names aside
                long_name = None


def _split_name(name: str) -> tuple[str | None, str]:
    """``dir/key.ext.more`` → (``dir/key``, ``ext.more``), as webdataset splits member names."""
    start = name.rfind("/") + 1
    dot = name.find(".", start)
    if dot <= start:  # no extension, or a hidden file
        return None, ""
    return name[:dot], name[dot + 1 :].lower()


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})``: consecutive members sharing a key form one sample,
    as in webdataset (``<key>.jpg`` + ``<key>.txt``); its ``__…__`` metadata members are skipped."""
    key: str | None = None
    parts: dict[str, bytes] = {}
    for name, data in iter_tar_files(path):
        base, ext = _split_name(name)
        if base is None or _META.match(name):
            continue
        if base != key:
            if key is not None:
                yield key, parts
            key, parts = base, {}
        parts[ext] = data
    if key is not None:
        yield key, parts
