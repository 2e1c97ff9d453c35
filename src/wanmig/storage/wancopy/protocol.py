"""wancopy's wire format: length-prefixed frames over TLS.

Every frame is ``type (u8), flags (u8), length (u32)`` and ``length`` bytes of
payload.  The sender opens one *index* connection, then ``streams`` data
connections, each starting with ``HELLO``::

    index:   S: HELLO {"session", "role": "index"}     R: INDEX (zstd of records)
    stream:  S: HELLO {"session", "role": "stream", "stream": i}
             R: WELCOME {"applied": n}                  (resume from message n)
             S: DATA | ZERO | REF ...                   R: ACK n  (now and then)
             S: DONE n                                  R: FINAL {stats} (flushed)

``DATA``: offset, length, hash, then the block (zstd, flag ``COMPRESSED``, in
the connection's one zstd stream, or raw where that does not shrink it);
``ZERO``: a range B writes zeros to; ``REF``: a block B already holds (in its
base, or sent earlier on this stream), by hash.  Everything a frame says is
checked against the target's size and the limits here before B acts on it
(``decode_*`` raise ``ProtocolError``): a peer that sends garbage ends its
own connection, not the receiver.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from typing import Any

from ...errors import StorageError

VERSION = 1
#: The unit blocks are hashed, deduplicated and sent in (qcow2's default cluster).
BLOCK = 64 * 1024
HASH_BYTES = 16
#: The most a frame may carry: a block, compressed or not, with its header; the index
#: frame is larger (``MAX_INDEX``).
MAX_FRAME = BLOCK + 1024
MAX_INDEX = 64 * 2**20
#: The longest zero range in one frame.
MAX_ZERO = 64 * 2**20
MAX_JSON = 64 * 1024

HELLO, WELCOME, INDEX, DATA, ZERO, REF, DONE, ACK, FINAL, ERROR = range(1, 11)
NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", INDEX: "INDEX", DATA: "DATA", ZERO: "ZERO",
         REF: "REF", DONE: "DONE", ACK: "ACK", FINAL: "FINAL", ERROR: "ERROR"}
COMPRESSED = 1

_HEADER = struct.Struct(">BBI")
_RANGE = struct.Struct(">QI")
_COUNT = struct.Struct(">Q")
_RECORD = struct.Struct(f">Q{HASH_BYTES}s")


class ProtocolError(StorageError):
    """A frame that breaks the protocol: the connection that sent it is closed."""


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    payload: bytes


def encode(ftype: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return _HEADER.pack(ftype, flags, len(payload)) + payload


def encode_json(ftype: int, obj: dict[str, Any]) -> bytes:
    return encode(ftype, json.dumps(obj, separators=(",", ":")).encode())


def encode_block(ftype: int, offset: int, length: int, digest: bytes = b"",
                 data: bytes = b"", flags: int = 0) -> bytes:
    """DATA (with ``digest`` and ``data``), REF (``digest``) or ZERO (neither)."""
    return encode(ftype, _RANGE.pack(offset, length) + digest + data, flags)


def encode_count(ftype: int, n: int) -> bytes:
    return encode(ftype, _COUNT.pack(n))


async def read_frame(reader: asyncio.StreamReader, max_payload: int = MAX_FRAME) -> Frame:
    """The next frame; ``ProtocolError`` for an unknown type or an oversized length,
    ``asyncio.IncompleteReadError`` when the peer closed."""
    ftype, flags, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if ftype not in NAMES:
        raise ProtocolError(f"unknown frame type {ftype}")
    if length > max_payload:
        raise ProtocolError(f"{NAMES[ftype]} frame of {length} bytes (at most {max_payload})")
    return Frame(ftype, flags, await reader.readexactly(length))


def decode_json(frame: Frame) -> dict[str, Any]:
    if len(frame.payload) > MAX_JSON:
        raise ProtocolError(f"{NAMES[frame.type]}: {len(frame.payload)} bytes of JSON")
    try:
        obj = json.loads(frame.payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{NAMES[frame.type]}: not JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{NAMES[frame.type]}: not a JSON object")
    return obj


def decode_count(frame: Frame) -> int:
    if len(frame.payload) != _COUNT.size:
        raise ProtocolError(f"{NAMES[frame.type]}: {len(frame.payload)} bytes, not 8")
    return _COUNT.unpack(frame.payload)[0]


@dataclass(frozen=True)
class Block:
    """A DATA, ZERO or REF frame, checked: the range inside the target, block-sized."""

    type: int
    offset: int
    length: int
    digest: bytes
    data: bytes
    compressed: bool


def decode_block(frame: Frame, target_size: int) -> Block:
    """A DATA, REF or ZERO frame's fields, or ``ProtocolError`` if they are malformed or
    reach outside ``target_size``."""
    p = frame.payload
    if frame.type not in (DATA, ZERO, REF) or len(p) < _RANGE.size:
        raise ProtocolError(f"{NAMES.get(frame.type, frame.type)}: not a block frame")
    offset, length = _RANGE.unpack_from(p)
    rest = p[_RANGE.size:]
    limit = MAX_ZERO if frame.type == ZERO else BLOCK
    if length == 0 or length > limit:
        raise ProtocolError(f"{NAMES[frame.type]}: length {length} (1..{limit})")
    if offset % 512 or length % 512 or offset + length > target_size:
        raise ProtocolError(f"{NAMES[frame.type]}: {offset}+{length} is not sector-aligned "
                            f"inside the {target_size}-byte target")
    if frame.type == ZERO:
        if rest or frame.flags:
            raise ProtocolError("ZERO: unexpected payload or flags")
        return Block(ZERO, offset, length, b"", b"", False)
    if len(rest) < HASH_BYTES:
        raise ProtocolError(f"{NAMES[frame.type]}: no hash")
    digest, data = rest[:HASH_BYTES], rest[HASH_BYTES:]
    if frame.type == REF:
        if data or frame.flags:
            raise ProtocolError("REF: unexpected payload or flags")
        return Block(REF, offset, length, digest, b"", False)
    compressed = bool(frame.flags & COMPRESSED)
    if frame.flags & ~COMPRESSED:
        raise ProtocolError(f"DATA: unknown flags {frame.flags:#x}")
    if not compressed and len(data) != length:
        raise ProtocolError(f"DATA: {len(data)} bytes for a {length}-byte block")
    return Block(DATA, offset, length, digest, data, compressed)


def encode_index(records: list[tuple[int, bytes]]) -> bytes:
    """The base index's records (offset, hash), packed (the caller compresses)."""
    return b"".join(_RECORD.pack(off, digest) for off, digest in records)


def decode_index(raw: bytes) -> list[tuple[int, bytes]]:
    """The records ``encode_index`` packed."""
    if len(raw) % _RECORD.size:
        raise ProtocolError(f"INDEX: {len(raw)} bytes is not a whole number of records")
    return list(_RECORD.iter_unpack(raw))
