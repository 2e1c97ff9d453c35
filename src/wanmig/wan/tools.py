"""Endpoint programs of the link measurements: ``python -m wanmig.wan.tools MODE ...``.

``measure.py`` runs them inside the site namespaces (``ip netns exec NS ...``),
one process per endpoint, so that no event loop, GC pass or other endpoint of
the controller can delay a packet.  One program, six modes::

    udp-echo    server  echoes datagrams back, stamping when it received and sent them
    udp-ping    client  paced RTT sampler: R datagrams/s for T s -> RTT percentiles
    udp-sink    server  counts sequence-numbered datagrams (loss, reordering, rate)
    udp-blast   client  paced UDP load at M Mbit/s for T s, sequence-numbered
    tcp-sink    server  receives one TCP stream; goodput over its steady part
    tcp-source  client  one bulk TCP stream for T s

Protocol (stdout, one JSON object a line): a server prints
``{"event": "ready", ...}`` once its socket is bound and then runs until
``stop`` or EOF on stdin, or SIGTERM (``tcp-sink`` also ends when its stream
ends); every mode ends with one ``{"event": "result", ...}`` line and exit 0.
A failure prints ``{"event": "error", "message": ...}`` and exits 1.

Timing: the RTT modes (udp-ping, udp-echo) ask for SCHED_FIFO and 1 us timer
slack, and wait in ``select()`` with microsecond timeouts against absolute
deadlines on a fixed grid, like the probe agent (``wanmig.probe.probes``,
whose helpers they reuse).  The load modes keep ordinary scheduling on
purpose: a real-time sender that is busy most of the time would starve the
forwarder it is measuring on a two-core machine.  All endpoints share the
host's clocks whatever their namespace, so datagrams carry their send time
and one-way delays come for free.  Arrivals are the kernel's receive stamps
(SO_TIMESTAMPNS, CLOCK_REALTIME, hence that clock for send times too), and
the echo's holding time is taken out of each round trip (as in TWAMP): the
figures are the path's, not the endpoints' wake-up latency.

The arithmetic (percentiles, pacing schedule, steady-state goodput, wire
sizes) is in pure functions at the top, unit-tested on their own.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import select
import signal
import socket
import struct
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ..children import emit
from ..probe.probes import _next_slot
from ..probe.stats import percentile
from ..realtime import set_realtime, set_timer_slack

MS = 1_000_000  # nanoseconds
S = 1_000_000_000

ETH_OVERHEAD = 14          # Ethernet header: what a TBF on a veth counts beyond the IP packet
IP_UDP_OVERHEAD = 28       # IPv4 + UDP headers
MAX_UDP_PAYLOAD = 1472     # fills a 1500-byte MTU
TCP_CHUNK = 1 << 20        # bytes per send()/recv() of the bulk stream
TIMELINE_STEP_NS = 10 * MS  # resolution of the tcp-sink's byte timeline
#: SCHED_FIFO priority of udp-ping/udp-echo: the probe agent's, below the forwarder's
#: (20), whose timing is what is measured.  They are busy for microseconds per datagram.
RT_PRIORITY = 10

SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

# ping/echo datagram: nonce, sequence, send time, the echo's receive and send times
# (CLOCK_REALTIME ns, the clock of kernel receive stamps; the echo's are 0 on the way out)
PING = struct.Struct("!IIQQQ")
ECHO_STAMPS = struct.Struct("!QQ")
ECHO_STAMPS_AT = PING.size - ECHO_STAMPS.size
# blast datagram: nonce, sequence, send time (CLOCK_REALTIME ns: the sink's kernel stamps
# are on that clock)
BLAST = struct.Struct("!IQQ")
# blaster's warm-up datagram, answered by the sink: magic, nonce, sequence, reply IPv4 + port
# (the address is in it because the sink reads with recv_into, which does not give it)
WARMUP = struct.Struct("!4sII4sH")
WARMUP_MAGIC = b"wmWU"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
TIMESPEC = struct.Struct("=qq")
U32 = struct.Struct("=I")
MAX_SEQ = 1 << 30          # udp-sink: sequence numbers beyond are not a blast's
OWD_SAMPLE_EVERY = 8       # udp-sink: one datagram in so many gives a one-way delay sample


# ------------------------------------------------------------ pure arithmetic

def summarize_ms(samples_ns: Sequence[int] | array) -> dict[str, float | int | None]:
    """count, p50, p90, p99, mean, min, max of nanosecond samples, in ms (3 decimals)."""
    data = sorted(samples_ns)
    if not data:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None,
                "mean_ms": None, "min_ms": None, "max_ms": None}

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x / MS, 3)

    return {"count": len(data), "p50_ms": ms(percentile(data, 50)),
            "p90_ms": ms(percentile(data, 90)), "p99_ms": ms(percentile(data, 99)),
            "mean_ms": ms(sum(data) / len(data)), "min_ms": ms(data[0]), "max_ms": ms(data[-1])}


def udp_wire_bytes(payload: int) -> int:
    """Bytes one UDP datagram of ``payload`` bytes takes on an Ethernet link (as TBF counts)."""
    return payload + IP_UDP_OVERHEAD + ETH_OVERHEAD


def packets_per_second(rate_mbit: float, payload: int) -> float:
    """Datagrams per second that make ``rate_mbit`` of Ethernet-level traffic."""
    return rate_mbit * 1e6 / 8 / udp_wire_bytes(payload)


def packets_due(elapsed_ns: int, pps: float, sent: int, max_burst: int) -> int:
    """How many datagrams to send now so that ``sent`` keeps up with ``pps``.

    Datagram k is due at ``k / pps`` after the start, so ``floor(elapsed * pps) + 1``
    are due at ``elapsed``.  A sender that woke late catches up with a burst of
    at most ``max_burst`` and forgets the rest of its debt: a long burst would
    overflow the bottleneck queue, which is congestion the sender made, not the
    link's loss.  The achieved rate is reported, so a dropped debt shows.
    """
    if elapsed_ns < 0:
        return 0
    due = int(elapsed_ns * pps // S) + 1
    return max(0, min(due - sent, max_burst))


def ns_until_next(elapsed_ns: int, pps: float, sent: int) -> int:
    """Nanoseconds from ``elapsed_ns`` until datagram number ``sent`` is due (>= 0)."""
    return max(0, int(sent * S / pps) - elapsed_ns)


def steady_goodput_mbit(timeline: Sequence[tuple[int, int]], skip_ns: int) -> float | None:
    """Goodput over the steady part of a transfer, from the receiver's byte timeline.

    ``timeline`` holds (time ns, cumulative bytes received) in time order, the
    first entry at the first byte and the last at the last byte.  The first
    ``skip_ns`` (slow start, queue filling) are left out: goodput is the bytes
    between ``first + skip`` (interpolated) and the last byte over that time.
    None when the transfer is not longer than the skip.
    """
    if len(timeline) < 2:
        return None
    t_first, t_last = timeline[0][0], timeline[-1][0]
    start = t_first + skip_ns
    if t_last - start <= 0:
        return None
    bytes_at_start = _interpolate(timeline, start)
    return (timeline[-1][1] - bytes_at_start) * 8 / ((t_last - start) / S) / 1e6


def _interpolate(timeline: Sequence[tuple[int, int]], t: int) -> float:
    """Cumulative bytes at ``t``, linear between the surrounding timeline points."""
    prev_t, prev_b = timeline[0]
    if t <= prev_t:
        return float(prev_b)
    for cur_t, cur_b in timeline[1:]:
        if cur_t >= t:
            return prev_b + (cur_b - prev_b) * (t - prev_t) / (cur_t - prev_t)
        prev_t, prev_b = cur_t, cur_b
    return float(prev_b)


# ----------------------------------------------------------------- plumbing

class _Stop(Exception):
    """SIGTERM/SIGINT: end the mode and print what was measured."""


class _Control:
    """A server's stdin: ``stop`` or EOF ends it.  ``fd`` goes into select()."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self._buf = b""

    def stop_requested(self) -> bool:
        """Read what is available on stdin; True on ``stop`` or EOF."""
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return False
        if not data:
            return True
        self._buf += data
        lines = self._buf.split(b"\n")
        self._buf = lines.pop()
        return any(line.strip() == b"stop" for line in lines)


def _timing_critical(rt_priority: int) -> bool:
    """SCHED_FIFO, 1 us timer slack, no cyclic GC: for the modes whose timing is measured."""
    set_timer_slack()
    gc.disable()
    return set_realtime(rt_priority)


def _udp_socket(bind: tuple[str, int] | None = None, *, buf: int = 4 << 20) -> socket.socket:
    """A UDP socket with large buffers; a server's is bound to the one address it serves."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt, force in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
        _set_buffer(sock, opt, force, buf)
    if bind is not None:
        sock.bind(bind)
    sock.setblocking(False)
    return sock


def _set_buffer(sock: socket.socket, opt: int, force: int, size: int) -> int:
    """Set a socket buffer to ``size`` bytes: beyond rmem/wmem_max when root.

    Linux doubles the value (half is bookkeeping) and caps the unforced form
    at net.core.rmem_max/wmem_max; returns what the kernel granted.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)
    return sock.getsockopt(socket.SOL_SOCKET, opt)


def _ancillary(anc: list[tuple[int, int, bytes]]) -> tuple[int, int | None]:
    """The kernel's receive stamp and the socket's drops so far, from recvmsg's ancillary data.

    The stamp is CLOCK_REALTIME ns (0 if absent); the drop count None if absent.
    """
    stamp, drops = 0, None
    for level, kind, data in anc:
        if level != socket.SOL_SOCKET:
            continue
        if kind == SO_TIMESTAMPNS and len(data) == TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack(data)
            stamp = sec * S + nsec
        elif kind == SO_RXQ_OVFL and len(data) == U32.size:
            drops = U32.unpack(data)[0]
    return stamp, drops


def _connect_udp(sock: socket.socket, addr: tuple[str, int], deadline: float) -> None:
    while True:
        try:
            sock.connect(addr)
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _nonce() -> int:
    return int.from_bytes(os.urandom(4), "big")


# ------------------------------------------------------------------ udp-echo

def udp_echo(args: argparse.Namespace) -> dict[str, Any]:
    """Echo every datagram; a ping gets the kernel's receive stamp and the send time.

    With both, the pinger subtracts the time the echo held the datagram (its
    wake-up and turnaround) from the round trip, as TWAMP does: the RTT is
    the path's, not this process's scheduling.
    """
    realtime = _timing_critical(args.rt_priority)
    sock = _udp_socket((args.bind, args.port))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    control = _Control()
    emit("ready", port=args.port, realtime=realtime, pid=os.getpid())
    buf = bytearray(2048)
    bufs, view = [buf], memoryview(buf)
    pack_into = ECHO_STAMPS.pack_into
    echoed = errors = 0
    try:
        while True:
            readable, _, _ = select.select([sock, control.fd], [], [])
            if control.fd in readable and control.stop_requested():
                break
            if sock not in readable:
                continue
            while True:
                try:
                    n, anc, _, addr = sock.recvmsg_into(bufs, 128)
                except BlockingIOError:
                    break
                if n >= PING.size:
                    received = _ancillary(anc)[0] or time.time_ns()
                    pack_into(buf, ECHO_STAMPS_AT, received, time.time_ns())
                try:
                    sock.sendto(view[:n], addr)
                    echoed += 1
                except OSError:
                    errors += 1
    except _Stop:
        pass
    return {"echoed": echoed, "send_errors": errors, "realtime": realtime}


# ------------------------------------------------------------------ udp-ping

def udp_ping(args: argparse.Namespace) -> dict[str, Any]:
    """Warm the path up (first reply, e.g. ARP), then sample at ``rate_hz`` for ``seconds``."""
    realtime = _timing_critical(args.rt_priority)
    sock = _udp_socket()
    addr = (args.target, args.port)
    size = max(PING.size, args.size)
    pad = bytes(size - PING.size)
    nonce = _nonce()
    warmup_ms = _warm_up(
        sock, addr, lambda seq: PING.pack(nonce, seq, time.time_ns(), 0, 0) + pad,
        lambda data: len(data) >= PING.size and PING.unpack_from(data)[0] == nonce,
        args.warmup_timeout)
    if warmup_ms is None:
        raise RuntimeError(f"no echo from {args.target}:{args.port} within "
                           f"{args.warmup_timeout:g} s")
    nonce = (nonce + 1) & 0xFFFFFFFF  # warm-up replies arriving late do not count
    interval = int(S / args.rate_hz)
    count = max(1, round(args.seconds * args.rate_hz))
    rtts, fwd, rev, held = array("q"), array("q"), array("q"), array("q")
    late = array("q")
    seen = bytearray(count)
    sent = send_errors = duplicates = 0
    pack, unpack = PING.pack, PING.unpack_from
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    buf = bytearray(2048)
    bufs = [buf]

    def receive() -> None:
        nonlocal duplicates
        while True:
            try:
                n, anc, _, _ = sock.recvmsg_into(bufs, 128)
            except BlockingIOError:
                return
            except OSError:
                continue  # ICMP error: the datagram counts as lost
            back = _ancillary(anc)[0] or time.time_ns()
            if n < PING.size:
                continue
            got_nonce, seq, sent_at, echo_rx, echo_tx = unpack(buf)
            if got_nonce != nonce or seq >= sent:
                continue
            if seen[seq]:
                duplicates += 1
                continue
            seen[seq] = 1
            if echo_rx and echo_tx >= echo_rx:
                rtts.append(back - sent_at - (echo_tx - echo_rx))
                fwd.append(echo_rx - sent_at)
                rev.append(back - echo_tx)
                held.append(echo_tx - echo_rx)
            else:
                rtts.append(back - sent_at)

    deadline = start = time.monotonic_ns()
    try:
        while sent < count:
            now = time.monotonic_ns()
            if now >= deadline:
                try:
                    sock.send(pack(nonce, sent, time.time_ns(), 0, 0) + pad)
                except OSError:
                    send_errors += 1
                late.append(now - deadline)
                sent += 1
                deadline = _next_slot(deadline, now, interval)
            if select.select([sock], [], [], max(0, deadline - time.monotonic_ns()) / S)[0]:
                receive()
        # late replies: twice the worst RTT seen, at least 200 ms, at most drain_max
        worst = max(rtts) if rtts else 0  # ns, as the grid's
        end = time.monotonic_ns() + min(int(args.drain_max * S), max(200 * MS, 2 * worst))
        while len(rtts) < sent and (now := time.monotonic_ns()) < end:
            if select.select([sock], [], [], (end - now) / S)[0]:
                receive()
    except _Stop:
        pass
    elapsed = (time.monotonic_ns() - start) / S
    return {
        "sent": sent, "received": len(rtts), "lost": sent - len(rtts),
        "duplicates": duplicates, "send_errors": send_errors,
        "rtt": summarize_ms(rtts), "forward": summarize_ms(fwd), "reverse": summarize_ms(rev),
        "echo_held": summarize_ms(held),
        "send_late_p99_ms": round((percentile(late, 99) or 0) / MS, 3),
        "warmup_ms": warmup_ms, "seconds": round(elapsed, 3), "realtime": realtime,
    }


def _warm_up(sock: socket.socket, addr: tuple[str, int], make: Callable[[int], bytes],
             is_reply: Callable[[bytes], bool], timeout_s: float) -> float | None:
    """Send ``make(seq)`` every 10 ms until a datagram ``is_reply``; ms it took, None if none.

    The first datagrams to a cold path wait for ARP (a round trip over the
    emulated link) in a small kernel queue that drops the overflow: nothing
    is measured before the path has answered once.
    """
    t0 = time.monotonic()
    _connect_udp(sock, addr, t0 + timeout_s)
    seq = 0
    while (left := t0 + timeout_s - time.monotonic()) > 0:
        try:
            sock.send(make(seq))
        except OSError:
            pass  # e.g. ECONNREFUSED from an earlier datagram: the server is not up yet
        seq += 1
        until = time.monotonic() + min(0.01, left)
        while (wait := until - time.monotonic()) > 0:
            if not select.select([sock], [], [], wait)[0]:
                break
            try:
                data = sock.recv(2048)
            except OSError:
                continue
            if is_reply(data):
                return round((time.monotonic() - t0) * 1000, 1)
    return None


# ----------------------------------------------------------- udp-blast / sink

def udp_blast(args: argparse.Namespace) -> dict[str, Any]:
    """Send ``rate_mbit`` (Ethernet-level) of sequence-numbered datagrams for ``seconds``."""
    payload = min(MAX_UDP_PAYLOAD, max(BLAST.size, args.size))
    pps = packets_per_second(args.rate_mbit, payload)
    count = max(1, round(pps * args.seconds)) if args.count is None else args.count
    if args.count is not None:
        pps = args.count / args.seconds
    max_burst = max(1, int(pps * args.max_burst_ms / 1000))
    gc.disable()
    sock = _udp_socket()
    nonce = _nonce()
    _connect_udp(sock, (args.target, args.port), time.monotonic() + args.warmup_timeout)
    ip, port = sock.getsockname()
    reply_to = (socket.inet_aton(ip), port)
    warmup_ms = _warm_up(
        sock, (args.target, args.port),
        lambda seq: WARMUP.pack(WARMUP_MAGIC, nonce, seq, *reply_to),
        lambda data: data[:8] == WARMUP_MAGIC + nonce.to_bytes(4, "big"), args.warmup_timeout)
    if warmup_ms is None:
        raise RuntimeError(f"no answer from udp-sink {args.target}:{args.port} within "
                           f"{args.warmup_timeout:g} s")
    sock.setblocking(True)  # a full queue blocks the sender instead of failing a send
    packet = bytearray(payload)
    pack_into = BLAST.pack_into
    sent = send_errors = 0
    start = time.monotonic_ns()
    try:
        while sent < count:
            now = time.monotonic_ns()
            n = min(packets_due(now - start, pps, sent, max_burst), count - sent)
            for _ in range(n):
                pack_into(packet, 0, nonce, sent, time.time_ns())
                try:
                    sock.send(packet)
                except OSError:
                    send_errors += 1  # ENOBUFS (full device queue), ICMP errors
                sent += 1
            wait = ns_until_next(time.monotonic_ns() - start, pps, sent)
            if wait > 50_000:  # shorter waits cost more in select() than they save
                time.sleep((wait - 20_000) / S)
    except _Stop:
        pass
    elapsed = (time.monotonic_ns() - start) / S
    ok = sent - send_errors
    return {
        "nonce": nonce, "sent": ok, "attempted": sent, "send_errors": send_errors,
        "payload": payload, "pps_set": round(pps, 1), "seconds": round(elapsed, 3),
        "rate_set_mbit": args.rate_mbit, "warmup_ms": warmup_ms,
        "rate_mbit": round(ok * udp_wire_bytes(payload) * 8 / elapsed / 1e6, 3)
        if elapsed > 0 else None,
    }


def udp_sink(args: argparse.Namespace) -> dict[str, Any]:
    """Count distinct sequence numbers per sender nonce; the busiest sender is reported.

    Every datagram is read with the cheap ``recv_into`` (at 500 Mbit/s that
    is 41 000 a second on a machine the forwarder keeps busy), and every
    ``OWD_SAMPLE_EVERY``-th with ``recvmsg_into`` for two things the kernel
    attaches: its receive stamp (SO_TIMESTAMPNS), so that one-way delays do
    not include this process's own lag behind a fast stream, and how many
    datagrams the socket dropped because this process did not keep up
    (SO_RXQ_OVFL).  Those are reported as ``socket_drops``: the machine's
    loss, not the link's.
    """
    gc.disable()
    sock = _udp_socket((args.bind, args.port), buf=16 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    control = _Control()
    emit("ready", port=args.port, pid=os.getpid())
    buf = bytearray(65536)
    bufs = [buf]
    unpack = BLAST.unpack_from
    streams: dict[int, _SinkStream] = {}
    socket_drops = 0
    count = 0
    try:
        while True:
            readable, _, _ = select.select([sock, control.fd], [], [])
            if sock in readable:
                while True:
                    stamp = 0
                    try:
                        if count % OWD_SAMPLE_EVERY:
                            n = sock.recv_into(buf)
                        else:
                            n, anc, _, _ = sock.recvmsg_into(bufs, 128)
                            stamp, drops = _ancillary(anc)
                            if drops is not None:
                                socket_drops = drops  # the socket's total so far
                    except BlockingIOError:
                        break
                    count += 1
                    if n == WARMUP.size and buf[:4] == WARMUP_MAGIC:
                        _answer_warm_up(sock, buf)
                        continue
                    if n < BLAST.size:
                        continue
                    nonce, seq, sent_at = unpack(buf)
                    if seq >= MAX_SEQ:
                        continue  # not one of ours: would size the bitmap absurdly
                    stream = streams.get(nonce)
                    if stream is None:
                        stream = streams[nonce] = _SinkStream()
                    stream.add(seq, n, stamp or time.time_ns(), sent_at if stamp else 0)
            if control.fd in readable and control.stop_requested():
                break
    except _Stop:
        pass
    if not streams:
        return {"nonce": None, "received": 0, "streams": 0, "socket_drops": socket_drops}
    nonce, best = max(streams.items(), key=lambda item: item[1].received)
    return {"nonce": nonce, "streams": len(streams), "socket_drops": socket_drops,
            **best.summary()}


def _answer_warm_up(sock: socket.socket, buf: bytearray) -> None:
    """Send a blaster's warm-up datagram back to the address written in it."""
    _, _, _, ip, port = WARMUP.unpack_from(buf)
    with contextlib.suppress(OSError):
        sock.sendto(buf[:WARMUP.size], (socket.inet_ntoa(ip), port))


class _SinkStream:
    """What arrived of one blast: distinct sequence numbers, order, timing."""

    __slots__ = ("seen", "received", "duplicates", "reordered", "highest", "bytes",
                 "first_ns", "last_ns", "owd")

    def __init__(self) -> None:
        self.seen = bytearray(1 << 16)
        self.received = self.duplicates = self.reordered = self.bytes = 0
        self.highest = -1
        self.first_ns = self.last_ns = 0
        self.owd = array("q")

    def add(self, seq: int, size: int, now: int, sent_at: int) -> None:
        """One datagram arrived at ``now``; ``sent_at`` 0: no one-way sample from it."""
        if seq >= len(self.seen):
            self.seen.extend(bytes(max(seq + 1 - len(self.seen), len(self.seen))))
        if self.seen[seq]:
            self.duplicates += 1
            return
        self.seen[seq] = 1
        if seq < self.highest:
            self.reordered += 1
        else:
            self.highest = seq
        if not self.received:
            self.first_ns = now
        self.last_ns = now
        self.received += 1
        self.bytes += size
        if sent_at:
            self.owd.append(now - sent_at)

    def summary(self) -> dict[str, Any]:
        span = (self.last_ns - self.first_ns) / S
        return {
            "received": self.received, "duplicates": self.duplicates,
            "reordered": self.reordered, "highest_seq": self.highest,
            "rate_mbit": round((self.bytes + self.received * (IP_UDP_OVERHEAD + ETH_OVERHEAD))
                               * 8 / span / 1e6, 3) if span > 0 else None,
            "one_way": summarize_ms(self.owd),
        }


# ------------------------------------------------------------ tcp-sink/source

def tcp_sink(args: argparse.Namespace) -> dict[str, Any]:
    """Accept one stream, read it to the end; goodput after ``skip`` seconds."""
    gc.disable()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    rcvbuf = None
    if args.rcvbuf:  # before listen(): accepted sockets inherit it, and the window scale
        rcvbuf = _set_buffer(srv, socket.SO_RCVBUF, SO_RCVBUFFORCE, args.rcvbuf)
    srv.bind((args.bind, args.port))
    srv.listen(1)
    control = _Control()
    emit("ready", port=args.port, rcvbuf=rcvbuf, pid=os.getpid())
    conn = None
    try:
        while conn is None:
            readable, _, _ = select.select([srv, control.fd], [], [])
            if srv in readable:
                conn, _ = srv.accept()
            elif control.stop_requested():
                return {"connected": False, "bytes": 0, "goodput_mbit": None}
        srv.close()
        return _receive_stream(conn, control, args.skip, rcvbuf)
    except _Stop:
        return {"connected": conn is not None, "bytes": 0, "goodput_mbit": None,
                "error": "stopped"}


def _receive_stream(conn: socket.socket, control: _Control, skip_s: float,
                    rcvbuf: int | None) -> dict[str, Any]:
    conn.setblocking(False)
    buf = bytearray(TCP_CHUNK)
    total = 0
    timeline: list[tuple[int, int]] = []  # a point every TIMELINE_STEP_NS, and the last byte
    last: tuple[int, int] | None = None
    error = None
    try:
        while True:
            readable, _, _ = select.select([conn, control.fd], [], [])
            if conn in readable:
                try:
                    n = conn.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    break
                if not n:
                    break
                total += n
                last = (time.monotonic_ns(), total)
                if not timeline or last[0] - timeline[-1][0] >= TIMELINE_STEP_NS:
                    timeline.append(last)
            if control.fd in readable and control.stop_requested():
                error = "stopped before the stream ended"
                break
    except _Stop:
        error = "stopped before the stream ended"
    if last is not None and last != timeline[-1]:
        timeline.append(last)
    conn.close()
    span = (timeline[-1][0] - timeline[0][0]) / S if len(timeline) > 1 else 0.0
    steady = steady_goodput_mbit(timeline, int(skip_s * S))
    return {
        "connected": True, "bytes": total, "seconds": round(span, 3),
        "goodput_mbit": round(steady, 3) if steady is not None else None,
        "mean_mbit": round(total * 8 / span / 1e6, 3) if span > 0 else None,
        "skip_s": skip_s, "rcvbuf": rcvbuf, "error": error,
    }


def tcp_source(args: argparse.Namespace) -> dict[str, Any]:
    """Send as fast as TCP lets us for ``seconds``, then close and report TCP's view."""
    gc.disable()
    deadline = time.monotonic() + args.connect_timeout
    while True:  # the sink may still be starting: retry with a fresh socket
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sndbuf = None
        if args.sndbuf:  # before connect(): the window scale is settled in the handshake
            sndbuf = _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, args.sndbuf)
        if args.cc:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, args.cc.encode())
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.connect((args.target, args.port))
            break
        except OSError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
    sock.settimeout(None)
    chunk = memoryview(bytes(TCP_CHUNK))
    sent = 0
    start = time.monotonic()
    end = start + args.seconds
    try:
        while (left := end - time.monotonic()) > 0:
            if select.select([], [sock], [], left)[1]:
                sent += sock.send(chunk)
    except _Stop:
        pass
    info = tcp_info(sock)
    cc = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0]
    sock.close()
    return {"bytes": sent, "seconds": round(time.monotonic() - start, 3), "sndbuf": sndbuf,
            "cc": cc.decode(), **info}


def tcp_info(sock: socket.socket) -> dict[str, Any]:
    """A few fields of ``struct tcp_info``: smoothed RTT, cwnd, retransmissions."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    if len(raw) < 104:
        return {}
    # 8 bytes of u8 fields, then u32s: rto, ato, snd_mss, rcv_mss, unacked, sacked, lost,
    # retrans, fackets, 4 x last_*, pmtu, rcv_ssthresh, rtt, rttvar, snd_ssthresh,
    # snd_cwnd, advmss, reordering, rcv_rtt, rcv_space, total_retrans
    u32 = struct.unpack_from("=24I", raw, 8)
    return {"tcp_rtt_ms": u32[15] / 1000, "tcp_cwnd": u32[18], "tcp_mss": u32[2],
            "tcp_total_retrans": u32[23]}


# ---------------------------------------------------------------------- main

MODES = {
    "udp-echo": udp_echo, "udp-ping": udp_ping, "udp-blast": udp_blast,
    "udp-sink": udp_sink, "tcp-sink": tcp_sink, "tcp-source": tcp_source,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wanmig.wan.tools",
                                description="Endpoints of the WAN link measurements.")
    p.add_argument("--owner", default=None,
                   help="ignored; names the owning run so `wanmig clean` can find us")
    sub = p.add_subparsers(dest="mode", required=True)

    echo = sub.add_parser("udp-echo", help="UDP echo server (stamps its receive time)")
    echo.add_argument("--port", type=int, required=True)
    echo.add_argument("--bind", required=True, help="the one address to listen on")
    echo.add_argument("--rt-priority", type=int, default=RT_PRIORITY)

    ping = sub.add_parser("udp-ping", help="paced UDP RTT sampler")
    ping.add_argument("--target", required=True)
    ping.add_argument("--port", type=int, required=True)
    ping.add_argument("--rate-hz", type=float, default=200.0)
    ping.add_argument("--seconds", type=float, required=True)
    ping.add_argument("--size", type=int, default=64, help="datagram payload bytes")
    ping.add_argument("--warmup-timeout", type=float, default=5.0)
    ping.add_argument("--drain-max", type=float, default=2.0,
                      help="longest wait for late replies after the last send (s)")
    ping.add_argument("--rt-priority", type=int, default=RT_PRIORITY)

    blast = sub.add_parser("udp-blast", help="paced, sequence-numbered UDP load")
    blast.add_argument("--target", required=True)
    blast.add_argument("--port", type=int, required=True)
    blast.add_argument("--rate-mbit", type=float, required=True,
                       help="Ethernet-level rate (what a shaper on the link counts)")
    blast.add_argument("--seconds", type=float, required=True)
    blast.add_argument("--count", type=int, default=None,
                       help="send exactly this many datagrams, spread over --seconds")
    blast.add_argument("--size", type=int, default=MAX_UDP_PAYLOAD, help="payload bytes")
    blast.add_argument("--max-burst-ms", type=float, default=2.0)
    blast.add_argument("--warmup-timeout", type=float, default=5.0,
                       help="seconds to wait for the sink's first answer")

    sink = sub.add_parser("udp-sink", help="counts sequence-numbered datagrams")
    sink.add_argument("--port", type=int, required=True)
    sink.add_argument("--bind", required=True, help="the one address to listen on")

    tsink = sub.add_parser("tcp-sink", help="receives one bulk TCP stream")
    tsink.add_argument("--port", type=int, required=True)
    tsink.add_argument("--bind", required=True, help="the one address to listen on")
    tsink.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF bytes (0: autotune)")
    tsink.add_argument("--skip", type=float, default=1.0,
                       help="seconds after the first byte left out of the goodput")

    source = sub.add_parser("tcp-source", help="one bulk TCP stream")
    source.add_argument("--target", required=True)
    source.add_argument("--port", type=int, required=True)
    source.add_argument("--seconds", type=float, required=True)
    source.add_argument("--sndbuf", type=int, default=0, help="SO_SNDBUF bytes (0: autotune)")
    source.add_argument("--cc", default=None, help="congestion control (default: the netns')")
    source.add_argument("--connect-timeout", type=float, default=5.0)

    args = p.parse_args(argv)
    for name in ("seconds", "rate_hz", "rate_mbit"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        result = MODES[args.mode](args)
    except _Stop:
        emit("error", message=f"{args.mode}: stopped before it had a result")
        return 1
    except Exception as exc:  # one line for the controller, not a traceback
        emit("error", message=f"{args.mode}: {type(exc).__name__}: {exc}")
        return 1
    emit("result", mode=args.mode, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
