"""A small asyncio NBD client for a local ``qemu-nbd`` on a Unix socket.

``wancopy`` reads the source image and writes the destination's through
QEMU's own block layer (``qemu-nbd``: qcow2, backing chains, zero clusters),
and needs from NBD only what this speaks: the fixed-newstyle handshake with
``NBD_OPT_GO``, and ``READ``, ``WRITE``, ``WRITE_ZEROES``, ``FLUSH`` and
``DISC`` with simple replies, one request at a time (a Unix socket answers
in microseconds; the WAN is crossed by ``wancopy``'s own streams, not by
NBD).  Written here rather than taken from libnbd because Debian's Python
binding (``python3-libnbd``) is built for the system interpreter only, and
the virtualenv's may differ.  The protocol: NBD's ``doc/proto.md``.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from pathlib import Path

from ..errors import StorageError

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
REPLY_MAGIC = 0x3E889045565A9
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
REP_ERROR_BIT = 1 << 31
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_WRITE_ZEROES = 0, 1, 2, 3, 6
#: The largest request this client makes (qemu-nbd takes up to 32 MiB).
MAX_REQUEST = 4 * 2**20
TIMEOUT_S = 60.0

_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_OPT_REPLY = struct.Struct(">QIII")


class NbdClient:
    """One connection to an NBD export; ``async with NbdClient.open(path)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 size: int, what: str) -> None:
        self._reader, self._writer = reader, writer
        self.size = size
        self.what = what
        self._cookies = itertools.count(1)

    @classmethod
    async def open(cls, socket: Path, export: str = "") -> NbdClient:
        what = f"NBD server at {socket}"
        try:
            async with asyncio.timeout(TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(str(socket))
                size = await _handshake(reader, writer, export, what)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise StorageError(f"{what}: handshake failed: {exc!r}", cause=exc) from exc
        return cls(reader, writer, size, what)

    async def __aenter__(self) -> NbdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def read(self, offset: int, length: int) -> bytes:
        return await self._request(CMD_READ, offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        await self._request(CMD_WRITE, offset, len(data), data)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self._request(CMD_WRITE_ZEROES, offset, length)

    async def flush(self) -> None:
        await self._request(CMD_FLUSH, 0, 0)

    async def close(self) -> None:
        """``NBD_CMD_DISC`` (no reply), then the socket closes."""
        if self._writer.is_closing():
            return
        try:
            self._writer.write(_REQUEST.pack(REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
            await self._writer.drain()
        except OSError:
            pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def _request(self, cmd: int, offset: int, length: int, data: bytes = b"") -> bytes:
        if length > MAX_REQUEST or offset < 0 or offset + length > self.size:
            raise StorageError(f"{self.what}: request {offset}+{length} outside the "
                               f"{self.size}-byte export or over {MAX_REQUEST} bytes")
        cookie = next(self._cookies)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                self._writer.write(_REQUEST.pack(REQUEST_MAGIC, 0, cmd, cookie, offset,
                                                 length) + data)
                await self._writer.drain()
                magic, error, got = _SIMPLE_REPLY.unpack(
                    await self._reader.readexactly(_SIMPLE_REPLY.size))
                if magic != SIMPLE_REPLY_MAGIC or got != cookie:
                    raise StorageError(f"{self.what}: unexpected reply "
                                       f"(magic {magic:#x}, cookie {got})")
                if error:
                    raise StorageError(f"{self.what}: command {cmd} at {offset}+{length} "
                                       f"failed with NBD error {error}")
                return await self._reader.readexactly(length) if cmd == CMD_READ else b""
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise StorageError(f"{self.what}: command {cmd} at {offset}+{length}: "
                               f"{exc!r}", cause=exc) from exc


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     export: str, what: str) -> int:
    """Fixed newstyle, ``NBD_OPT_GO``: the export's size."""
    greeting = await reader.readexactly(18)
    if greeting[:16] != NBDMAGIC + IHAVEOPT:
        raise StorageError(f"{what} is not a newstyle NBD server")
    flags = struct.unpack(">H", greeting[16:])[0]
    if not flags & FLAG_FIXED_NEWSTYLE:
        raise StorageError(f"{what} does not speak fixed newstyle NBD")
    name = export.encode()
    writer.write(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES))
                 + IHAVEOPT + struct.pack(">II", OPT_GO, 4 + len(name) + 2)
                 + struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    await writer.drain()
    size: int | None = None
    while True:
        magic, _opt, rep, length = _OPT_REPLY.unpack(await reader.readexactly(_OPT_REPLY.size))
        body = await reader.readexactly(length)
        if magic != REPLY_MAGIC:
            raise StorageError(f"{what}: bad option reply magic {magic:#x}")
        if rep & REP_ERROR_BIT:
            raise StorageError(f"{what}: export {export!r} refused ({rep:#x}: "
                               f"{body.decode(errors='replace')})")
        if rep == REP_INFO and len(body) >= 12 and struct.unpack(">H", body[:2])[0] == INFO_EXPORT:
            size = struct.unpack(">Q", body[2:10])[0]
        elif rep == REP_ACK:
            if size is None:
                raise StorageError(f"{what}: no export size given")
            return size
