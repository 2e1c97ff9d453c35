"""wancopy's receiving end, at B: a TLS server writing what arrives into B's image.

The target is a fresh qcow2 overlay on B's base (nothing of its own yet:
checked at start), so a block the sender finds equal to the base at the same
offset need not cross at all, and a block equal to one elsewhere in the base
is copied locally (``REF``).  Each data stream keeps what it applied, so a
stream whose connection broke resumes where it stopped (``WELCOME``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zstandard

from ...children import emit
from ...errors import StorageError
from ..disk import disk_facts
from ..nbdclient import NbdClient
from . import protocol as p
from .endpoint import local_nbd, peer_fingerprint, server_context, stdin_lines
from .index import load_or_scan

#: An ACK after this many applied frames (and at the end).
ACK_EVERY = 64
HANDSHAKE_TIMEOUT_S = 30.0


@dataclass
class ReceiverStats:
    frames: int = 0
    data_bytes: int = 0        # written from DATA frames
    wire_data_bytes: int = 0   # ... as they arrived (compressed)
    zero_bytes: int = 0
    ref_base_bytes: int = 0    # copied from B's base
    ref_stream_bytes: int = 0  # copied from a block sent earlier
    rejected: int = 0          # connections closed for a protocol error


@dataclass
class StreamState:
    applied: int = 0
    defined: dict[bytes, int] | None = None   # hash -> target offset, of applied DATA
    task: asyncio.Task[None] | None = None


class Receiver:
    def __init__(self, target: Path, base: Path, session: str, client_cert: str | None,
                 nbd_sock: Path, index: list[tuple[int, bytes]]) -> None:
        self.target, self.base, self.session = target, base, session
        self.client_cert = client_cert
        self.nbd_sock = nbd_sock
        self.index = index
        self.in_base = {digest: off for off, digest in index}
        self.streams: dict[int, StreamState] = {}
        self.stats = ReceiverStats()
        self._base_fd = os.open(base, os.O_RDONLY)
        self._index_frame = p.encode(p.INDEX, zstandard.ZstdCompressor().compress(
            p.encode_index(index)))

    def close(self) -> None:
        os.close(self._base_fd)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: its HELLO says what it is."""
        try:
            if self.client_cert is not None and peer_fingerprint(writer) != self.client_cert:
                raise p.ProtocolError(f"client certificate {peer_fingerprint(writer)} is not "
                                      "this migration's source")
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                hello = await p.read_frame(reader)
                if hello.type != p.HELLO:
                    raise p.ProtocolError(f"{p.NAMES[hello.type]} before HELLO")
                info = p.decode_json(hello)
            if info.get("session") != self.session or info.get("version") != p.VERSION:
                raise p.ProtocolError("HELLO for another session or protocol version")
            if info.get("role") == "index":
                writer.write(self._index_frame)
                await writer.drain()
                return
            stream = info.get("stream")
            if info.get("role") != "stream" or not isinstance(stream, int) or not 0 <= stream < 64:
                raise p.ProtocolError(f"HELLO with role {info.get('role')!r}, "
                                      f"stream {stream!r}")
            await self._take_over(stream)
            state = self.streams[stream]
            state.task = asyncio.current_task()
            writer.write(p.encode_json(p.WELCOME, {"applied": state.applied}))
            await writer.drain()
            await self._apply_stream(state, reader, writer)
        except p.ProtocolError as exc:
            self.stats.rejected += 1
            emit("rejected", reason=str(exc))
            with contextlib.suppress(OSError):
                writer.write(p.encode(p.ERROR, str(exc).encode()[:1000]))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass   # the connection broke: the sender reconnects and resumes
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _take_over(self, stream: int) -> None:
        """A new connection for ``stream`` replaces one that may not have noticed it broke."""
        state = self.streams.setdefault(stream, StreamState(defined={}))
        old = state.task
        if old is not None and not old.done() and old is not asyncio.current_task():
            old.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await old

    async def _apply_stream(self, state: StreamState, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        assert state.defined is not None
        unzstd = zstandard.ZstdDecompressor().decompressobj()
        async with await NbdClient.open(self.nbd_sock) as nbd:
            while True:
                frame = await p.read_frame(reader)
                if frame.type == p.DONE:
                    if p.decode_count(frame) != state.applied:
                        raise p.ProtocolError(f"DONE after {p.decode_count(frame)} frames, "
                                              f"{state.applied} applied")
                    await nbd.flush()
                    writer.write(p.encode_json(p.FINAL, {"applied": state.applied,
                                                         **asdict(self.stats)}))
                    await writer.drain()
                    return
                block = p.decode_block(frame, nbd.size)
                await self._apply(nbd, unzstd, state, block)
                state.applied += 1
                self.stats.frames += 1
                if state.applied % ACK_EVERY == 0:
                    writer.write(p.encode_count(p.ACK, state.applied))

    async def _apply(self, nbd: NbdClient, unzstd: Any, state: StreamState,
                     block: p.Block) -> None:
        assert state.defined is not None
        if block.type == p.ZERO:
            await nbd.write_zeroes(block.offset, block.length)
            self.stats.zero_bytes += block.length
            return
        if block.type == p.REF:
            if block.digest in self.in_base:
                data = os.pread(self._base_fd, block.length, self.in_base[block.digest])
                self.stats.ref_base_bytes += block.length
            elif block.digest in state.defined:
                data = await nbd.read(state.defined[block.digest], block.length)
                self.stats.ref_stream_bytes += block.length
            else:
                raise p.ProtocolError("REF to a block B does not hold")
            if len(data) != block.length:
                raise p.ProtocolError("REF to a block shorter than its length")
            await nbd.write(block.offset, data)
            return
        data = block.data
        if block.compressed:
            try:
                data = unzstd.decompress(data)
            except zstandard.ZstdError as exc:
                raise p.ProtocolError(f"DATA: bad zstd: {exc}") from exc
            if len(data) != block.length:
                raise p.ProtocolError(f"DATA: {len(data)} bytes decompressed for a "
                                      f"{block.length}-byte block")
        await nbd.write(block.offset, data)
        state.defined[block.digest] = block.offset
        self.stats.data_bytes += block.length
        self.stats.wire_data_bytes += len(block.data)


async def _check_fresh(target: Path) -> None:
    """The target must hold nothing of its own: the skipped same-as-base blocks rely on
    reading through to the base."""
    facts = await disk_facts(target)
    if facts.top_bytes:
        raise StorageError(f"wancopy: the target {target} already holds "
                           f"{facts.top_bytes} bytes of its own; it must be a fresh overlay "
                           "on B's base")


async def run(target: Path, base: Path, listen: str, port: int, tls_dir: Path | None,
              session: str, client_cert: str | None, streams: int) -> int:
    await _check_fresh(target)
    index = await asyncio.to_thread(load_or_scan, base)
    async with local_nbd(target, writable=True, clients=streams + 1) as sock:
        receiver = Receiver(target, base, session, client_cert, sock, index)
        ssl_ctx = server_context(tls_dir) if tls_dir is not None else None
        server = await asyncio.start_server(receiver.serve, listen, port, ssl=ssl_ctx,
                                            reuse_address=True)
        emit("ready", index_blocks=len(index), pid=os.getpid())
        try:
            async for line in stdin_lines():
                if line == "stop":
                    break
                if line:
                    emit("error", message=f"unknown command {line!r}", fatal=False)
        finally:
            server.close()
            tasks = [s.task for s in receiver.streams.values() if s.task and not s.task.done()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            receiver.close()
    # after qemu-nbd is gone: the caller may kill this process once it reads this
    emit("stopped", **asdict(receiver.stats),
         streams={i: s.applied for i, s in receiver.streams.items()})
    return 0
