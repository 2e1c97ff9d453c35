"""What B already holds, by content: the base image's blocks and their hashes.

Each ``BLOCK``-aligned block of the raw base that is not all zeros is hashed
(BLAKE2b, 16 bytes); the index is the list of (offset, hash).  Reading a
2 GiB base takes seconds, so the index is cached beside the base
(``<base>.wancopy-index``), keyed by the base's size and mtime; a base that
changes gets a new index.  Holes are skipped (``SEEK_DATA``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import zstandard

from ...errors import StorageError
from .protocol import BLOCK, HASH_BYTES, decode_index, encode_index

ZERO_BLOCK = bytes(BLOCK)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def data_ranges(f: int, size: int) -> list[tuple[int, int]]:
    """The file's data ranges (start, end), holes left out."""
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(f, pos, os.SEEK_DATA)
        except OSError:   # ENXIO: only a hole is left
            break
        end = os.lseek(f, start, os.SEEK_HOLE)
        out.append((start, end))
        pos = end
    return out


def scan(base: Path) -> list[tuple[int, bytes]]:
    """(offset, hash) of every non-zero block of the raw image ``base``."""
    records: list[tuple[int, bytes]] = []
    fd = os.open(base, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for start, end in data_ranges(fd, size):
            off = start - start % BLOCK
            while off < end:
                block = os.pread(fd, BLOCK, off)
                if block and block != ZERO_BLOCK[:len(block)]:
                    records.append((off, digest(block)))
                off += BLOCK
    finally:
        os.close(fd)
    return records


def _key(base: Path) -> str:
    st = base.stat()
    return f"v1:{BLOCK}:{st.st_size}:{st.st_mtime_ns}"


def cache_path(base: Path) -> Path:
    return base.with_name(base.name + ".wancopy-index")


def load_or_scan(base: Path) -> list[tuple[int, bytes]]:
    """The base's index, from its cache when that matches the base, else scanned (and
    cached where the base's directory is writable)."""
    cache, key = cache_path(base), _key(base)
    try:
        head, _, body = cache.read_bytes().partition(b"\n")
        if json.loads(head).get("key") == key:
            return decode_index(zstandard.ZstdDecompressor().decompress(body))
    except (OSError, ValueError, zstandard.ZstdError, StorageError):
        pass
    records = scan(base)
    tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_bytes(json.dumps({"key": key}).encode() + b"\n"
                        + zstandard.ZstdCompressor().compress(encode_index(records)))
        os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)
    return records
