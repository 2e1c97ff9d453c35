"""wancopy's sending end, at A: reads the top layer of a frozen image and sends what
B does not already hold.

A producer walks the image's own extents (``qemu-img map``, depth 0), reads
them through ``qemu-nbd`` and sorts every ``BLOCK``:

* explicit zeros, or a block of zeros: ``ZERO`` (no payload);
* equal to B's base at the same offset (``same_offset``, where B's target
  reads through to that base): nothing at all;
* a hash B's base holds elsewhere, or one this stream sent before: ``REF``;
* anything else: ``DATA``, zstd-compressed in the connection's one stream.

Blocks go to ``streams`` TLS connections by hash (equal blocks share a
stream, so a ``REF`` always follows its ``DATA``).  Each stream keeps a log
of what it sent; when its connection breaks (or stalls ``STALL_S``) it
reconnects for up to ``resume_s`` and resends from what B says it applied.
One token bucket paces all streams (``rate``, bytes/s, changed with the
``rate`` command).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from ...children import emit
from ...errors import StorageError
from ..disk import image_map
from ..nbdclient import NbdClient
from . import protocol as p
from .endpoint import client_context, local_nbd, stdin_lines
from .index import ZERO_BLOCK, digest

#: A read from the source: this many bytes at a time.
READ_CHUNK = 16 * p.BLOCK
QUEUE_BLOCKS = 64
STALL_S = 60.0
CONNECT_TIMEOUT_S = 10.0
PROGRESS_S = 0.5
#: Linux's per-socket pacing cap (bytes/s; TCP paces itself since 4.13, no fq needed).
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)


@dataclass
class SenderStats:
    total_bytes: int = 0          # the image's own extents (what a plain copy sends)
    scanned_bytes: int = 0
    data_bytes: int = 0           # sent as DATA, before compression
    data_wire_bytes: int = 0      # ... after
    frame_bytes: int = 0          # every frame written (headers, resends included)
    zero_bytes: int = 0           # sent as ZERO
    zero_found_bytes: int = 0     # ... of it, blocks of zeros found in the image's data
    same_bytes: int = 0           # equal to B's base at the same offset: not sent
    ref_base_bytes: int = 0       # B's base holds it elsewhere
    ref_stream_bytes: int = 0     # sent before on the same stream
    resent_frames: int = 0
    reconnects: int = 0
    index_blocks: int = 0


@dataclass
class Item:
    type: int
    offset: int
    length: int
    digest: bytes = b""
    data: bytes | None = field(default=None, repr=False)


class Pacer:
    """A token bucket over the bytes all streams write; ``rate`` 0 is no limit."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._t = time.monotonic()
        self._debt = 0.0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._debt = max(0.0, self._debt - (now - self._t) * self.rate) + n
        self._t = now
        wait = self._debt / self.rate - 0.05   # a little burst is fine
        if wait > 0:
            await asyncio.sleep(wait)


async def top_extents(image: Path) -> list[tuple[int, int, bool]]:
    """(start, length, zero) of what ``image`` itself holds (depth 0 of its chain)."""
    return [(int(e["start"]), int(e["length"]), bool(e.get("zero")))
            for e in await image_map(image)
            if int(e.get("depth", 0)) == 0 and (e.get("data") or e.get("zero"))
            and e.get("present", True)]


class Sender:
    def __init__(self, *, host: str, port: int, ssl_ctx: ssl.SSLContext | None,
                 session: str, streams: int, level: int, rate: int, resume_s: float,
                 same_offset: bool, pace: int = 0) -> None:
        self.host, self.port, self.ssl_ctx = host, port, ssl_ctx
        self.session, self.n_streams, self.level = session, streams, level
        self.pacer = Pacer(rate)
        self.resume_s, self.same_offset, self.pace = resume_s, same_offset, pace
        self.stats = SenderStats()
        self.in_base: set[bytes] = set()
        self.base_at: dict[int, bytes] = {}
        self.queues: list[asyncio.Queue[Item | None]] = [
            asyncio.Queue(QUEUE_BLOCKS) for _ in range(streams)]
        self.final: dict[int, dict[str, Any]] = {}
        self.clients: list[NbdClient] = []     # the source's NBD: the producer's, each stream's
        self._open: list[asyncio.StreamWriter] = []

    # -- connections -------------------------------------------------------------

    async def _connect(self, hello: dict[str, Any]) -> tuple[asyncio.StreamReader,
                                                             asyncio.StreamWriter]:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl_ctx,
                server_hostname=self.host if self.ssl_ctx else None)
        sock = writer.get_extra_info("socket")
        if self.pace and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, min(self.pace, 2**32 - 1))
        writer.write(p.encode_json(p.HELLO, {"session": self.session, "version": p.VERSION,
                                             **hello}))
        return reader, writer

    async def fetch_index(self) -> None:
        """What B's base holds: its blocks' hashes and offsets."""
        reader, writer = await self._connect({"role": "index"})
        try:
            frame = await _expect(reader, p.INDEX, p.MAX_INDEX)
            raw = zstandard.ZstdDecompressor().decompress(frame.payload,
                                                          max_output_size=p.MAX_INDEX * 4)
        finally:
            writer.close()
        for off, d in p.decode_index(raw):
            self.in_base.add(d)
            self.base_at[off] = d
        self.stats.index_blocks = len(self.base_at)

    # -- the producer ------------------------------------------------------------

    async def produce(self, nbd: NbdClient, extents: list[tuple[int, int, bool]]) -> None:
        for start, length, zero in extents:
            if zero:
                for off in range(start, start + length, p.MAX_ZERO):
                    n = min(p.MAX_ZERO, start + length - off)
                    await self._route(Item(p.ZERO, off, n), off // p.MAX_ZERO)
                    self.stats.scanned_bytes += n
                continue
            off, end = start, start + length
            while off < end:
                n = min(READ_CHUNK - off % READ_CHUNK, end - off)
                chunk = await nbd.read(off, n)
                for i in range(0, n, p.BLOCK):
                    await self._block(off + i, chunk[i:i + p.BLOCK])
                off += n
        for q in self.queues:
            await q.put(None)

    async def _block(self, off: int, data: bytes) -> None:
        n = len(data)
        self.stats.scanned_bytes += n
        if data == ZERO_BLOCK[:n]:
            self.stats.zero_found_bytes += n
            await self._route(Item(p.ZERO, off, n), off // p.BLOCK)
            return
        d = digest(data)
        if self.same_offset and n == p.BLOCK and self.base_at.get(off) == d:
            self.stats.same_bytes += n
            return
        await self._route(Item(p.DATA, off, n, d, data), d[0])

    async def _route(self, item: Item, key: int) -> None:
        await self.queues[key % self.n_streams].put(item)

    # -- a stream ----------------------------------------------------------------

    async def stream(self, i: int) -> None:
        """Stream ``i``: connects at once, sends what the producer routes to it (blocks
        it must send again are re-read through ``clients``, open by then)."""
        log: list[Item] = []        # what this stream sent, data dropped
        defined: set[bytes] = set()
        ended = False
        deadline = None
        while True:
            try:
                reader, writer = await self._connect({"role": "stream", "stream": i})
                welcome = p.decode_json(await _expect(reader, p.WELCOME, p.MAX_JSON))
                applied = int(welcome.get("applied", 0))
                if not 0 <= applied <= len(log):
                    raise p.ProtocolError(f"B applied {applied} of {len(log)} frames")
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                deadline = deadline or time.monotonic() + self.resume_s
                if time.monotonic() > deadline:
                    raise StorageError(f"stream {i}: no connection to B for "
                                       f"{self.resume_s:g} s ({exc!r})") from exc
                await asyncio.sleep(1.0)
                continue
            deadline = None
            self._open.append(writer)
            ack = asyncio.create_task(self._acks(i, reader))
            try:
                zstd = (zstandard.ZstdCompressor(level=self.level).compressobj()
                        if self.level > 0 else None)
                for item in log[applied:]:          # what B lost with the last connection
                    if item.type == p.DATA:
                        item = Item(item.type, item.offset, item.length, item.digest,
                                    await self.clients[i + 1].read(item.offset, item.length))
                    await self._send(writer, zstd, item, ack)
                    self.stats.resent_frames += 1
                while not ended:
                    item = await self.queues[i].get()
                    if item is None:
                        ended = True
                        break
                    if item.type == p.DATA and item.digest in self.in_base:
                        item = Item(p.REF, item.offset, item.length, item.digest)
                        self.stats.ref_base_bytes += item.length
                    elif item.type == p.DATA and item.digest in defined:
                        item = Item(p.REF, item.offset, item.length, item.digest)
                        self.stats.ref_stream_bytes += item.length
                    elif item.type == p.DATA:
                        defined.add(item.digest)
                    elif item.type == p.ZERO:
                        self.stats.zero_bytes += item.length
                    # logged first: if the connection breaks while it is sent, it is
                    # resent from the log (B's WELCOME says whether it arrived)
                    log.append(Item(item.type, item.offset, item.length, item.digest))
                    await self._send(writer, zstd, item, ack, count=True)
                writer.write(p.encode_count(p.DONE, len(log)))
                async with asyncio.timeout(STALL_S):
                    await asyncio.wait([ack])
                self.final[i] = ack.result()
                return
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self.stats.reconnects += 1
                emit("reconnect", stream=i, reason=repr(exc))
                ack.cancel()
                writer.close()
                continue

    async def _send(self, writer: asyncio.StreamWriter, zstd: Any, item: Item,
                    ack: asyncio.Task[Any], count: bool = False) -> None:
        if ack.done():          # B closed the connection, said why, or it broke
            ack.result()
            raise ConnectionResetError("B closed the stream")
        if item.type == p.DATA:
            assert item.data is not None
            if zstd is not None:
                body = zstd.compress(item.data) + zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                frame = p.encode_block(p.DATA, item.offset, item.length, item.digest, body,
                                       p.COMPRESSED)
            else:
                body = item.data
                frame = p.encode_block(p.DATA, item.offset, item.length, item.digest, body)
            if count:
                self.stats.data_bytes += item.length
                self.stats.data_wire_bytes += len(body)
        else:
            frame = p.encode_block(item.type, item.offset, item.length, item.digest)
        await self.pacer.take(len(frame))
        writer.write(frame)
        self.stats.frame_bytes += len(frame)
        async with asyncio.timeout(STALL_S):
            await writer.drain()

    async def _acks(self, i: int, reader: asyncio.StreamReader) -> dict[str, Any]:
        """B's ACKs on stream ``i`` until its FINAL (returned); an ERROR is fatal."""
        while True:
            frame = await p.read_frame(reader, p.MAX_JSON)
            if frame.type == p.FINAL:
                return p.decode_json(frame)
            if frame.type == p.ERROR:
                raise StorageError(f"B refused stream {i}: "
                                   f"{frame.payload.decode(errors='replace')}")
            if frame.type != p.ACK:
                raise p.ProtocolError(f"{p.NAMES[frame.type]} from B on stream {i}")

    async def close(self) -> None:
        """Drop every connection: B has applied, flushed and acknowledged all (FINAL),
        so there is nothing for TLS's closing handshake to protect, and it would cost a
        round trip."""
        for w in self._open:
            w.transport.abort()


async def _expect(reader: asyncio.StreamReader, ftype: int, max_payload: int) -> p.Frame:
    async with asyncio.timeout(CONNECT_TIMEOUT_S * 3):
        frame = await p.read_frame(reader, max_payload)
    if frame.type == p.ERROR:
        raise StorageError(f"B refused: {frame.payload.decode(errors='replace')}")
    if frame.type != ftype:
        raise p.ProtocolError(f"{p.NAMES[frame.type]} where {p.NAMES[ftype]} was expected")
    return frame


async def _progress(sender: Sender) -> None:
    while True:
        await asyncio.sleep(PROGRESS_S)
        s = sender.stats
        emit("progress", done=s.scanned_bytes, total=s.total_bytes, sent=s.frame_bytes)


async def _commands(sender: Sender, go: asyncio.Event, stop: asyncio.Event) -> None:
    async for line in stdin_lines():
        verb, _, arg = line.partition(" ")
        if verb == "rate" and arg.strip().isdigit():
            sender.pacer.rate = int(arg)
            emit("rate", rate=sender.pacer.rate)
        elif verb == "go":
            go.set()
        elif verb == "stop":
            break
        elif line:
            emit("error", message=f"unknown command {line!r}", fatal=False)
    stop.set()


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def run(source: Path, host: str, port: int, tls_dir: Path | None, session: str,
              streams: int, level: int, rate: int, resume_s: float, same_offset: bool,
              pace: int, wait_go: bool) -> int:
    """Connect (the index, then the streams at once), say ``ready``; with ``wait_go``,
    wait for ``go`` -- the source may still change until then: it is read only after
    -- then map the source, say ``going`` and copy; the last ``progress`` has the
    statistics; ``stop`` ends it."""
    sender = Sender(host=host, port=port,
                    ssl_ctx=client_context(tls_dir) if tls_dir is not None else None,
                    session=session, streams=streams, level=level, rate=rate,
                    resume_s=resume_s, same_offset=same_offset, pace=pace)
    go, stop = asyncio.Event(), asyncio.Event()
    if not wait_go:
        go.set()
    commands = asyncio.create_task(_commands(sender, go, stop))
    # the streams connect while the index crosses (their queues fill only after it)
    tasks = [asyncio.create_task(sender.stream(i)) for i in range(streams)]
    try:
        await sender.fetch_index()
        emit("ready", index_blocks=sender.stats.index_blocks)
        await _first(go, stop)
        if go.is_set():
            await _copy(sender, source, tasks)
            await stop.wait()     # the caller counts the bytes on the open connections first
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sender.close()
    commands.cancel()
    emit("stopped")
    return 0


async def _copy(sender: Sender, source: Path, tasks: list[asyncio.Task[None]]) -> None:
    extents = await top_extents(source)
    s = sender.stats
    s.total_bytes = sum(length for _, length, _ in extents)
    emit("going", total=s.total_bytes)
    async with local_nbd(source, writable=False, clients=sender.n_streams + 1) as sock:
        sender.clients = [await NbdClient.open(sock) for _ in range(sender.n_streams + 1)]
        progress = asyncio.create_task(_progress(sender))
        t0 = time.monotonic()
        try:
            await asyncio.gather(sender.produce(sender.clients[0], extents), *tasks)
        finally:
            progress.cancel()
            for c in sender.clients:
                await c.close()
    emit("progress", done=s.scanned_bytes, total=s.total_bytes, sent=s.frame_bytes,
         final=True, elapsed_s=round(time.monotonic() - t0, 3), **asdict(s),
         receiver=sender.final)
