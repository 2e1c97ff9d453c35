"""The user-space WAN back end: a delay line between two interfaces, one frame at a time.

Run as ``ip netns exec MIDDLE python -m wanmig.wan.forwarder --left IF --right IF
--profile JSON``.  The middle namespace holds two veth ends without addresses;
an AF_PACKET socket on each receives every frame that arrives there, holds it
for the one-way delay (plus jitter), may drop it (loss, link down), and writes
it out of the other interface.  TBF on each interface's egress (installed by
``WanLink``) provides the bottleneck rate and its bounded queue.  Nothing is
terminated: TCP runs end to end and sees the RTT, the rate and the drops.

Choices, and why (measured on this machine: 2 cores, a VM, kernel without netem)::

    PACKET_VNET_HDR   Every frame comes with a virtio-net header and is written
                      back with it.  The kernel then hands over GSO super-frames
                      (up to 64 kB of TCP in one recv) and takes them back, so the
                      Python loop is not capped by the packet rate (ceiling with no
                      delay: ~7.8 Gbit/s at ~70% of a core, against ~2.5 Gbit/s at
                      95% with plain frames and every offload turned off), and
                      frames whose checksum was offloaded (CHECKSUM_PARTIAL: every
                      TCP frame on a veth) keep "checksum still to do" instead of
                      arriving with a bad one.  No ethtool: the sites' interfaces,
                      which decide what is offloaded, are left alone.
    IGNORE_OUTGOING   The kernel does not loop our own writes back to us (the
                      alternative, recvfrom + pkttype check, costs a tuple per frame).
    select()          Its timeout is in microseconds (epoll's and poll's are in
                      milliseconds; asyncio's timers add over 1 ms of error).
    two-step wake-up  Timer wake-ups come late here, the more so the longer the
                      sleep (25 ms: ~200 µs late; 1 ms: ~50 µs).  A long wait sleeps
                      to 1 ms before the release, then to ``--spin-us`` before it,
                      then polls; frames due within 25 µs leave together.  Releases
                      are then 1-20 µs late on average instead of 60-90 µs, at no
                      measurable CPU cost (polling 100 µs doubled it under load).
    SCHED_FIFO        On two busy cores an ordinary process wakes up to tens of
                      ms late; a real-time one promptly.  The loop sleeps in
                      select() when idle, and RT throttling bounds it anyway.
    no GC             The loop allocates no cycles; a full collection over the
                      frames in flight would stall it for milliseconds.
    two deques        Release times only grow (the no-reordering rule), so a
                      FIFO per direction is the whole scheduler: no heap, and
                      floats + bytes in two deques allocate no tuples.

GSO super-frames are cut into wire frames in Python (``split_gso``) in two
cases only, since it costs ~100 µs per super-frame:

* TCP inside VXLAN (the testbed's stretched L2 segment).  The vnet header can
  only call such a frame "TCPv4", the kernel then cannot segment what we write
  back and drops it: every such frame is cut here (tunnelled TCP tops out near
  1.2 Gbit/s, far above the profiles' rates).
* Loss, which is per wire frame: each segment of a super-frame is drawn for, and
  only when one is lost is the super-frame cut and the survivors forwarded.  One
  that cannot be cut is dropped whole as often as any of its frames would be.

A full TBF queue makes ``send`` fail with ENOBUFS: that is the bottleneck
dropping the frame, counted as ``queue_drops``.  ``overruns`` are frames the
kernel dropped because this process did not read them in time.
``release_late_mean_us`` (negative: early) is the delay line's own error.

Control protocol (like the probe agent): JSON lines on stdout, commands on stdin::

    -> {"event": "ready", "pid": .., "vnet_hdr": true, "realtime": true, ...}
    <- down                  -> {"event": "down"}   drop everything both ways, flush
                                                    what is in flight
    <- up                    -> {"event": "up"}
    <- set {"rtt_ms": ..}    -> {"event": "set", "profile": {..}}  delay/jitter/loss, live
    <- stats                 -> {"event": "stats", "left_to_right": {..},
                                 "right_to_left": {..}, "cpu_s": .., ...}
    <- stop                  -> {"event": "stopped", ...the stats...}; exit 0
    (EOF)                       the controller died: the link carries on (module text)

A bad command answers ``{"event": "error", "fatal": false, "message": ..}``;
a failure to start answers ``{"event": "error", "fatal": true, ..}`` and exits 1.
SIGTERM/SIGINT act like ``stop``.
"""

from __future__ import annotations

import argparse
import collections
import errno
import gc
import json
import math
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from types import FrameType
from typing import Any

from ..realtime import set_realtime
from .profiles import LinkProfile

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

#: struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
#: (native byte order: AF_PACKET uses the host's, little-endian here).
VNET_HDR = struct.Struct("=BBHHHH")
VNET_LEN = VNET_HDR.size
VNET_F_NEEDS_CSUM = 1
GSO_TCPV4, GSO_TCPV6, GSO_ECN = 1, 4, 0x80

#: One recv: a 64 kB GSO super-frame, its headers and the vnet header fit.
RECV_SIZE = 65536 + 256
#: Frames read from one socket before releases are looked at again.
RX_BATCH = 64
#: Socket buffers.  Receive: absorbs a scheduling hiccup at 1 Gbit/s (~30 ms).  Send:
#: an AF_PACKET socket is charged for the frames it wrote until TBF lets them go, so
#: the send buffer must exceed the largest TBF queue or send() would fail first.
RCVBUF = 4 << 20
SNDBUF = 32 << 20
#: Timer wake-ups are late, more so after a long sleep (this VM: a 25 ms select() oversleeps
#: ~200 us, a 1 ms one ~50 us).  So a wait longer than SLEEP_COARSE_S first sleeps until
#: SLEEP_COARSE_LEAD_S before the release, then sleeps again until ``spin_us`` before it,
#: then polls (select with timeout 0, sockets still served) until the time has come.
#: Measured here: releases late by 63 us on average with no polling, 6 us polling the last
#: 100 us (but twice the CPU under load), 1-20 us with 50 us and COALESCE_S.
SLEEP_COARSE_S = 0.002
SLEEP_COARSE_LEAD_S = 0.001
#: Frames due within this much of now leave together: under load this merges nearly
#: simultaneous releases into one pass (fewer wake-ups and polls) for <= 25 us of error.
COALESCE_S = 25e-6


# ----------------------------------------------------------------- one direction

class Direction:
    """Frames from ``rx``'s interface to ``tx``'s: the delay line and its counters."""

    __slots__ = ("name", "rx", "tx", "times", "frames", "last", "fwd_frames", "fwd_bytes",
                 "loss_drops", "down_drops", "queue_drops", "tx_errors", "rx_errors",
                 "overruns", "late_sum", "late_n", "late_max", "cut", "uncut")

    def __init__(self, name: str, rx: socket.socket, tx: socket.socket) -> None:
        self.name = name
        self.rx, self.tx = rx, tx
        self.times: collections.deque[float] = collections.deque()
        self.frames: collections.deque[bytes] = collections.deque()
        self.last = 0.0  # release time of the last frame queued: never release earlier
        self.fwd_frames = self.fwd_bytes = 0
        self.loss_drops = self.down_drops = self.queue_drops = 0
        self.tx_errors = self.rx_errors = self.overruns = 0
        self.cut = self.uncut = 0  # GSO super-frames cut here / that could not be
        # how late releases were (first frame of each release pass): the loop's own error
        self.late_sum = self.late_max = 0.0
        self.late_n = 0

    def __repr__(self) -> str:
        return f"Direction({self.name}, in_flight={len(self.times)}, sent={self.fwd_frames})"

    def stats(self, vnet: bool) -> dict[str, Any]:
        """Counters; ``frames`` as written (a GSO super-frame counts once, its cut pieces
        each), ``bytes`` of Ethernet frames without the vnet header."""
        try:
            _, drops = struct.unpack("II", self.rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self.overruns += drops  # the kernel resets its counters on every read
        except OSError:
            pass
        return {"frames": self.fwd_frames,
                "bytes": self.fwd_bytes - (VNET_LEN * self.fwd_frames if vnet else 0),
                "loss_drops": self.loss_drops, "down_drops": self.down_drops,
                "queue_drops": self.queue_drops, "tx_errors": self.tx_errors,
                "rx_errors": self.rx_errors, "overruns": self.overruns,
                "in_flight": len(self.times), "gso_cut": self.cut, "gso_uncut": self.uncut,
                "release_late_mean_us": round(self.late_sum / self.late_n * 1e6, 1)
                if self.late_n else None,
                "release_late_max_us": round(self.late_max * 1e6, 1)}


# ------------------------------------------------------------------ forwarder

class _StopSignal(Exception):
    """Raised from a SIGTERM/SIGINT handler to leave the loop."""


class Forwarder:
    """The two directions, the control channel, and the loop that serves them."""

    def __init__(self, left: socket.socket, right: socket.socket, profile: LinkProfile, *,
                 vnet: bool, seed: int | None = None, ctl_fd: int = 0,
                 spin_us: float = 50.0,
                 out: Any = None) -> None:
        self.l2r = Direction("left_to_right", left, right)
        self.r2l = Direction("right_to_left", right, left)
        self.vnet = vnet
        self.ctl_fd = ctl_fd
        self._fds: list[int] = []   # what the loop waits on (the control fd until EOF)
        self.out = out if out is not None else sys.stdout
        self.rng = random.Random(seed)
        self.down = False
        self.running = True
        self.realtime = False
        self.t0 = time.monotonic()
        self._ctl_buf = b""
        self.spin_s = spin_us / 1e6
        self.apply(profile)

    def __repr__(self) -> str:
        return (f"Forwarder({self.profile.name}, {'down' if self.down else 'up'}, "
                f"{self.l2r!r}, {self.r2l!r})")

    def apply(self, profile: LinkProfile) -> None:
        """Take delay, jitter and loss from ``profile`` (rate is TBF's business)."""
        self.profile = profile
        self.delay_s = profile.one_way_ms / 1e3
        self.jitter_s = profile.jitter_ms / 1e3
        self.loss = profile.loss_pct / 100.0

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        mono, sel = time.monotonic, select.select
        dirs = (self.l2r, self.r2l)
        l_fd, r_fd = self.l2r.rx.fileno(), self.r2l.rx.fileno()
        fds = self._fds = [self.ctl_fd, l_fd, r_fd]
        inf = math.inf
        spin = self.spin_s
        early = COALESCE_S
        while self.running:
            now = mono()
            nxt = inf
            for d in dirs:
                times = d.times
                if times:
                    if times[0] <= now + early:
                        self._release(d, now, now + early)
                    if times and times[0] < nxt:
                        nxt = times[0]
            if nxt is inf:
                timeout = None
            else:
                # wake up in two steps, then poll: see SLEEP_COARSE_S
                left = nxt - mono()
                if left > SLEEP_COARSE_S:
                    timeout = left - SLEEP_COARSE_LEAD_S
                elif left > spin:
                    timeout = left - spin
                else:
                    timeout = 0.0
            for fd in sel(fds, (), (), timeout)[0]:
                if fd == l_fd:
                    self._receive(self.l2r)
                elif fd == r_fd:
                    self._receive(self.r2l)
                else:
                    self._control()

    def _receive(self, d: Direction) -> None:
        """Read what is waiting (up to a batch) and put it on the delay line."""
        recv, mono = d.rx.recv, time.monotonic
        times, frames = d.times, d.frames
        delay, jitter, loss = self.delay_s, self.jitter_s, self.loss
        for _ in range(RX_BATCH):
            try:
                data = recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                d.rx_errors += 1  # e.g. a GSO kind the vnet header cannot describe
                continue
            now = mono()
            if self.down:
                d.down_drops += 1
                continue
            if self.vnet and data[1]:  # gso_type: a super-frame standing for several frames
                tunnelled = is_tunnelled(data)
                if tunnelled or loss:
                    for part in self._gso_slow_path(d, data, tunnelled):
                        self._queue(d, part, now)
                    continue
            elif loss:
                if self.rng.random() < loss:
                    d.loss_drops += 1
                    continue
            release = now + delay
            if jitter:
                release += self.rng.uniform(-jitter, jitter)
            if release < d.last:
                release = d.last  # never overtake the frame ahead: no reordering
            d.last = release
            if release <= now and not times:
                self._send(d, data)  # no delay and nothing ahead: no need to queue
            else:
                times.append(release)
                frames.append(data)

    def _queue(self, d: Direction, data: bytes, now: float) -> None:
        """The slow path's version of what ``_receive`` does inline."""
        release = now + self.delay_s
        if self.jitter_s:
            release += self.rng.uniform(-self.jitter_s, self.jitter_s)
        release = max(release, d.last)
        d.last = release
        d.times.append(release)
        d.frames.append(data)

    def _release(self, d: Direction, now: float, due: float) -> None:
        """Write every frame whose time has come to the other side."""
        times, frames = d.times, d.frames
        send = d.tx.send
        sent = nbytes = 0
        late = now - times[0]
        d.late_sum += late
        d.late_n += 1
        if late > d.late_max:
            d.late_max = late
        while times and times[0] <= due:
            times.popleft()
            data = frames.popleft()
            try:
                send(data)
            except OSError as exc:
                self._send_failed(d, exc)
            else:
                sent += 1
                nbytes += len(data)
        d.fwd_frames += sent
        d.fwd_bytes += nbytes

    def _send(self, d: Direction, data: bytes) -> None:
        try:
            d.tx.send(data)
        except OSError as exc:
            self._send_failed(d, exc)
        else:
            d.fwd_frames += 1
            d.fwd_bytes += len(data)

    @staticmethod
    def _send_failed(d: Direction, exc: OSError) -> None:
        # ENOBUFS: TBF's queue is full (the bottleneck drops); EAGAIN: our send
        # buffer is (frames still queued in TBF are charged to it) -- also a queue drop.
        if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
            d.queue_drops += 1
        else:
            d.tx_errors += 1

    def _gso_slow_path(self, d: Direction, data: bytes, tunnelled: bool) -> list[bytes]:
        """A GSO super-frame that is tunnelled (must be cut here) or may lose frames.

        Loss is drawn per wire frame; a super-frame that lost none and needs no
        cutting goes on whole.  One that cannot be cut is dropped whole as often
        as any of its frames would be.
        """
        n = gso_segment_count(data)
        lost = {i for i in range(n) if self.rng.random() < self.loss} if self.loss else set()
        if not lost and not tunnelled:
            return [data]
        parts = split_gso(data)
        if parts is None:
            d.uncut += 1
            if lost:
                d.loss_drops += n
                return []
            return [data]
        d.cut += 1
        if lost:
            d.loss_drops += len(lost)
            return [p for i, p in enumerate(parts) if i not in lost]
        return parts

    # -- control --------------------------------------------------------------

    def _control(self) -> None:
        chunk = os.read(self.ctl_fd, 65536)
        if not chunk:
            # EOF: the controller is gone (crashed: ``wanmig recover``).  The link is the
            # network, not the controller's: it carries on until ``stop``, a signal, or
            # ``wanmig clean`` (this command line names the run directory).
            self._fds.remove(self.ctl_fd)
            return
        self._ctl_buf += chunk
        while b"\n" in self._ctl_buf:
            line, self._ctl_buf = self._ctl_buf.split(b"\n", 1)
            self.handle(line.decode(errors="replace"))
            if not self.running:
                return

    def handle(self, line: str) -> None:
        command, _, rest = line.strip().partition(" ")
        if command == "stop":
            self.running = False
        elif command == "down":
            self.down = True
            for d in (self.l2r, self.r2l):  # a cut link loses what is on the wire too
                d.down_drops += len(d.times)
                d.times.clear()
                d.frames.clear()
            self.emit("down")
        elif command == "up":
            self.down = False
            self.emit("up")
        elif command == "set":
            self._set(rest)
        elif command == "stats":
            self.emit("stats", **self.stats())
        elif command:
            self.emit("error", fatal=False, message=f"unknown command {command!r}")
        # a control command may have made cyclic garbage (json, pydantic): collect it now,
        # outside the hot path, since the automatic collector is off
        gc.collect(0)

    def _set(self, text: str) -> None:
        try:
            update = json.loads(text)
            if not isinstance(update, dict):
                raise ValueError("expected a JSON object")
            merged = {**self.profile.model_dump(), **update}
            profile = LinkProfile.model_validate(merged)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            message = str(exc).splitlines()
            self.emit("error", fatal=False, message=f"set: {' '.join(message[:3])}")
            return
        self.apply(profile)
        self.emit("set", profile=profile.model_dump())

    def stats(self) -> dict[str, Any]:
        return {"state": "down" if self.down else "up",
                "left_to_right": self.l2r.stats(self.vnet),
                "right_to_left": self.r2l.stats(self.vnet),
                "cpu_s": round(time.process_time(), 4),
                "uptime_s": round(time.monotonic() - self.t0, 4),
                "realtime": self.realtime, "vnet_hdr": self.vnet,
                "profile": self.profile.model_dump()}

    def emit(self, event: str, **fields: Any) -> None:
        try:
            self.out.write(json.dumps({"event": event, **fields}) + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):
            self.running = False  # nobody listens any more


# ------------------------------------------------------------- GSO segmentation

def csum16(b: bytes | bytearray) -> int:
    """Ones'-complement sum of 16-bit big-endian words (odd length: zero-padded).

    2**16 is 1 modulo 0xFFFF, so the sum is the number the bytes spell, modulo 0xFFFF:
    one big-integer operation in C instead of a Python loop over the words.
    """
    if len(b) & 1:
        b = bytes(b) + b"\0"
    return int.from_bytes(b, "big") % 0xFFFF


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def is_tunnelled(data: bytes) -> bool:
    """A GSO super-frame whose outer transport is UDP: TCP inside a tunnel (VXLAN).

    The vnet header can only say "TCPv4/TCPv6" for these, and the kernel cannot
    segment such a frame when it is written back (it drops it), so the forwarder
    cuts them itself.  Offsets: vnet header (10) + Ethernet (14) + protocol field.
    """
    ethertype = data[VNET_LEN + 12:VNET_LEN + 14]
    if ethertype == b"\x08\x00":
        return data[VNET_LEN + 14 + 9] == 17
    return ethertype == b"\x86\xdd" and data[VNET_LEN + 14 + 6] == 17


def _layout(frame: bytes, l4: int) -> tuple[list[tuple[int, int]], int | None] | None:
    """The IP headers (offset, version) and UDP header (offset) in front of the TCP
    header at ``l4``: plain TCP, or TCP inside VXLAN (UDP, 8-byte VXLAN header,
    Ethernet).  None for anything else (IP options are fine, IPv6 extension headers,
    other tunnels and VLAN-tagged inner frames are not)."""
    ethertype = int.from_bytes(frame[12:14], "big")
    off = 14
    if ethertype == 0x8100:  # one VLAN tag on the outer frame
        ethertype, off = int.from_bytes(frame[16:18], "big"), 18
    ips: list[tuple[int, int]] = []
    udp = None
    for depth in range(2):
        if ethertype == 0x0800 and frame[off] >> 4 == 4:
            proto, nxt = frame[off + 9], off + (frame[off] & 0x0F) * 4
            ips.append((off, 4))
        elif ethertype == 0x86DD and frame[off] >> 4 == 6:
            proto, nxt = frame[off + 6], off + 40
            ips.append((off, 6))
        else:
            return None
        if proto == 6:
            return (ips, udp) if nxt == l4 else None
        if proto != 17 or depth or not frame[nxt + 8] & 0x08:  # VXLAN's "VNI valid" flag
            return None
        udp = nxt
        inner = udp + 8 + 8
        ethertype, off = int.from_bytes(frame[inner + 12:inner + 14], "big"), inner + 14
    return None


def gso_segment_count(data: bytes) -> int:
    """How many wire frames a vnet-header GSO super-frame stands for."""
    _, _, _, mss, csum_start, _ = VNET_HDR.unpack_from(data)
    if not mss or len(data) <= VNET_LEN + csum_start + 12:
        return 1
    thl = (data[VNET_LEN + csum_start + 12] >> 4) * 4  # right for TCP, an estimate else
    return max(1, -(-(len(data) - VNET_LEN - csum_start - thl) // mss))


def split_gso(data: bytes) -> list[bytes] | None:
    """Cut a TCP GSO super-frame (vnet header + Ethernet frame) into its wire frames.

    What the kernel's own segmentation does: each piece gets every IP header's
    length (IPv4: a new id and header checksum), the UDP length of a tunnel, the
    TCP sequence number and flags (FIN/PSH on the last piece only, CWR on the
    first only).  The TCP checksum is left to do ("needs checksum" in the piece's
    vnet header, the pseudo-header sum in the field), which the receiving stack
    accepts as it is.  A tunnel's outer UDP checksum is set to 0 over IPv4 ("none",
    as VXLAN over IPv4 sends it); over IPv6, where 0 is not allowed, both checksums
    are computed here.  None for what ``_layout`` does not know.
    """
    flags, gso_type, _, mss, csum_start, csum_offset = VNET_HDR.unpack_from(data)
    if gso_type & ~GSO_ECN not in (GSO_TCPV4, GSO_TCPV6) or not flags & VNET_F_NEEDS_CSUM \
            or mss <= 0:
        return None
    frame = data[VNET_LEN:]
    tcp = csum_start
    layout = _layout(frame, tcp)
    if layout is None:
        return None
    ips, udp = layout
    thl = (frame[tcp + 12] >> 4) * 4
    hlen = tcp + thl
    head, payload = frame[:hlen], frame[hlen:]
    seq0 = int.from_bytes(head[tcp + 4:tcp + 8], "big")
    ids = [int.from_bytes(head[off + 4:off + 6], "big") for off, _ in ips]
    tcp_flags = head[tcp + 13]
    inner_off, inner_v = ips[-1]
    tcp_pseudo = (csum16(head[inner_off + 12:inner_off + 20]) if inner_v == 4
                  else csum16(head[inner_off + 8:inner_off + 40])) + 6
    # outer IPv6 + UDP: the UDP checksum must be real, so it must cover a real TCP one
    full = udp is not None and ips[0][1] == 6
    vnet = VNET_HDR.pack(0 if full else VNET_F_NEEDS_CSUM, 0, 0, 0,
                         0 if full else csum_start, 0 if full else csum_offset)
    count = max(1, -(-len(payload) // mss))
    parts = []
    for i in range(count):
        chunk = payload[i * mss:(i + 1) * mss]
        end = hlen + len(chunk)  # the piece's frame length
        h = bytearray(head)
        for (off, version), ip_id in zip(ips, ids):
            if version == 4:
                ihl = (h[off] & 0x0F) * 4
                struct.pack_into("!HH", h, off + 2, end - off, (ip_id + i) & 0xFFFF)
                h[off + 10:off + 12] = b"\0\0"  # (pack_into's "x" would zero TTL and protocol)
                struct.pack_into("!H", h, off + 10, ~_fold(csum16(h[off:off + ihl])) & 0xFFFF)
            else:
                struct.pack_into("!H", h, off + 4, end - off - 40)
        if udp is not None:
            struct.pack_into("!HH", h, udp + 4, end - udp, 0)
        struct.pack_into("!I", h, tcp + 4, (seq0 + i * mss) & 0xFFFFFFFF)
        f = tcp_flags
        if i < count - 1:
            f &= ~0x09  # FIN and PSH only on the last piece
        if i > 0:
            f &= ~0x80  # CWR only on the first
        h[tcp + 13] = f
        tcp_sum = _fold(tcp_pseudo + end - tcp)
        if not full:
            struct.pack_into("!H", h, tcp + 16, tcp_sum)
        else:
            struct.pack_into("!H", h, tcp + 16, 0)
            s = _fold(tcp_sum + csum16(h[tcp:]) + csum16(chunk))
            struct.pack_into("!H", h, tcp + 16, ~s & 0xFFFF)
            assert udp is not None
            outer = ips[0][0]
            s = _fold(csum16(h[outer + 8:outer + 40]) + 17 + end - udp
                      + csum16(h[udp:]) + csum16(chunk))
            struct.pack_into("!H", h, udp + 6, (~s & 0xFFFF) or 0xFFFF)
        parts.append(vnet + bytes(h) + chunk)
    return parts


# ------------------------------------------------------------------- set-up

def open_port(ifname: str, *, vnet: bool) -> socket.socket:
    """A non-blocking AF_PACKET socket receiving every frame that arrives on ``ifname``."""
    # protocol 0: nothing is queued to the socket before bind() names the interface,
    # so no frame of another interface slips in
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        if vnet:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        for opt, fallback, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF),
                                    (SO_SNDBUFFORCE, socket.SO_SNDBUF, SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, fallback, size)
        sock.setblocking(False)
        sock.bind((ifname, ETH_P_ALL))
    except OSError:
        sock.close()
        raise
    return sock


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wanmig.wan.forwarder",
                                description="Delay, jitter and drop frames between two "
                                            "interfaces (the user-space WAN link).")
    p.add_argument("--left", required=True, help="interface of one side")
    p.add_argument("--right", required=True, help="interface of the other side")
    p.add_argument("--profile", required=True, help="the LinkProfile, as JSON")
    p.add_argument("--seed", type=int, default=None, help="seed of the loss/jitter draws")
    p.add_argument("--rt-priority", type=int, default=20,
                   help="SCHED_FIFO priority (0: ordinary scheduling)")
    p.add_argument("--spin-us", type=float, default=50.0,
                   help="poll instead of sleeping this close to a release (µs): "
                        "accuracy for CPU")
    p.add_argument("--no-vnet-hdr", dest="vnet", action="store_false",
                   help="plain frames (needs checksum and segmentation offloads off "
                        "on the sending interfaces; for comparison)")
    p.add_argument("--owner", default=None,
                   help="ignored; names the owning run so `wanmig clean` can find us")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stdout

    def fatal(message: str) -> int:
        out.write(json.dumps({"event": "error", "fatal": True, "message": message}) + "\n")
        out.flush()
        return 1

    try:
        profile = LinkProfile.model_validate_json(args.profile)
    except ValueError as exc:
        return fatal(f"bad --profile: {str(exc).splitlines()[0]}")
    ports: list[socket.socket] = []
    try:
        for ifname in (args.left, args.right):
            ports.append(open_port(ifname, vnet=args.vnet))
    except OSError as exc:
        for sock in ports:
            sock.close()
        return fatal(f"cannot open interface {ifname}: {exc.strerror or exc}")

    fwd = Forwarder(ports[0], ports[1], profile, vnet=args.vnet, seed=args.seed, out=out,
                    spin_us=args.spin_us)
    os.set_blocking(fwd.ctl_fd, False)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _StopSignal

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gc.freeze()    # what is alive now lives for the whole run
    gc.disable()   # and the loop makes no cycles (see the module docstring)
    fwd.realtime = set_realtime(args.rt_priority)
    fwd.emit("ready", pid=os.getpid(), left=args.left, right=args.right,
             vnet_hdr=args.vnet, realtime=fwd.realtime, profile=profile.model_dump())
    try:
        fwd.run()
    except _StopSignal:
        pass
    fwd.emit("stopped", **fwd.stats())
    for sock in ports:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
