"""The three probe threads, and the one-shot HTTP GET that ``newconn`` reuses.

Each probe is a thread with its own socket(s), timed with ``time.monotonic_ns``
against absolute deadlines on a fixed grid and woken by ``select()`` with
microsecond timeouts (asyncio's timers would add over a millisecond of error)::

    UdpEcho     one datagram per interval (1 or 5 ms) -> echo; gaps between replies,
                RTT, loss.  The largest gap is the client-visible outage;
                each mark also closes a window with its own largest gap.
    TcpStream   ONE connection opened at start, a numbered 16-byte message
                every 50 ms, each echo checked intact and in order.  It
                survived if it was never closed/reset and the last message
                sent before stop was echoed (within a grace period).
    HttpLoop    GET / on a new connection every 200 ms, 2 s timeout each; those
                that took over 1 s count apart (``http_failed_1s``: what a client
                with a 1 s timeout saw fail).

The probes must not be what loads the guest.  Under TCG a wake-up costs the
guest's one vCPU about a millisecond, and each HTTP request forks busybox's
httpd: with the TCP message every 10 ms and a GET every 50 ms (the first
rates), an idle guest at A with nothing migrating answered 67-78 % of the
1 ms echoes at a p50 RTT of 30-94 ms (3 runs, 15 s each), 38-87 % beside one
busy host process.  Every 50 ms and 200 ms, with the guest kernel halting when
idle (``qemu/image.py``), it answered 99-100 % at p50 2-5 ms (3 runs, 2 of
them beside the busy process).  The UDP echo's interval is the outage's
resolution; the run chooses it (``config.DEFAULT_PROBE_INTERVAL_MS``: 1 ms under
KVM, 5 ms under TCG, where even the echo alone at 1 ms kept the vCPU 91 % busy).

A thread that wakes late skips the missed slots rather than sending a burst.
Threads may run SCHED_FIFO and ask for 1 us timer slack (``wanmig.realtime``): all
the agent's threads, the UDP one a step higher, since one of them preempted
while it holds the GIL would delay the UDP thread just the same.

Windows: a probe's counters start with its first success (warm-up losses
such as ARP resolution are not outages) and open gaps are closed at the
moment stop was requested (a target that never answers again shows as one
long gap, not as none).  Instants are relative to the agent's start ``t0``.
Each probe's ``summary()`` returns its share of the ``ProbeReport`` fields;
it is read after the thread has been joined.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from array import array
from dataclasses import dataclass
from typing import Any

from ..realtime import set_realtime, set_timer_slack
from .stats import GapTracker, downsample, ns_to_ms, percentile

MS = 1_000_000  # nanoseconds
S = 1_000_000_000

UDP_DRAIN_MAX_NS = 1 * S     # longest wait for late UDP replies after stop
TCP_INTERVAL_NS = 50 * MS    # see the module note: what the guest sustains under TCG
HTTP_INTERVAL_NS = 200 * MS
HTTP_TIMEOUT_S = 2.0
ABORT_SLICE_S = 0.05         # how often a blocking wait looks at the stop flag
MAX_LOSS_BURSTS = 1000       # the report lists at most these (a dead target is one)
#: A new connection that takes longer than this has failed, for a client with a short
#: timeout (``http_failed_1s``): a SYN lost costs TCP's 1 s initial retransmission.
HTTP_CLIENT_DEADLINE_MS = 1000.0


def _next_slot(deadline: int, now: int, interval: int) -> int:
    """Next deadline on the grid after ``deadline`` that is still ahead of ``now``.

    A thread delayed by several intervals skips the missed slots instead of
    sending a burst (a burst would hide the delay as a later, shorter gap).
    """
    deadline += interval
    if deadline <= now:
        deadline += ((now - deadline) // interval + 1) * interval
    return deadline


def _err_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ProbeThread(threading.Thread):
    """Common lifetime of the three probes: start, run until ``request_stop``."""

    def __init__(self, name: str, t0: int) -> None:
        super().__init__(name=name, daemon=True)
        self.t0 = t0
        self.rt_priority = 0    # set before start(); 0: ordinary scheduling
        self.realtime = False
        self.stop_event = threading.Event()
        self.stop_at: int | None = None    # monotonic ns when stop was requested
        self.first_ok: int | None = None   # monotonic ns of the first success
        self.last_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.first_ok is not None

    def run(self) -> None:
        """Thread body: scheduling first (per thread on Linux), then the probe."""
        set_timer_slack()
        self.realtime = set_realtime(self.rt_priority)
        self.work()

    def work(self) -> None:
        raise NotImplementedError

    def request_stop(self, at: int) -> None:
        self.stop_at = at
        self.stop_event.set()

    def ms(self, t: int) -> float:
        return ns_to_ms(t - self.t0)


# --------------------------------------------------------------------- UDP

class UdpEcho(ProbeThread):
    """One datagram per interval; every reply's arrival time and RTT."""

    PACKET = struct.Struct("!IQQ")  # nonce, sequence number, send time (ns)

    def __init__(self, target: str, port: int, interval_ns: int, t0: int) -> None:
        super().__init__("udp-echo", t0)
        self.addr = (target, port)
        self.interval = interval_ns
        self.nonce = int.from_bytes(os.urandom(4), "big")
        self.sent = 0
        self.send_errors = 0
        self.first_seq: int | None = None     # the window starts at the first reply
        self.received = 0
        self.duplicates = 0
        self.seen = bytearray()
        self.rtts_ns = array("q")
        self.reply_seqs = array("q")          # the datagram each RTT answered
        self.late_ns = array("q")             # actual send time minus its slot
        self.sent_ns = array("q")             # when each datagram went (by seq)
        self.gaps = GapTracker()
        # the gaps since the last ``cut_window`` (a mark): swapped by the agent's main
        # thread while this one adds to it, hence the lock
        self.window = GapTracker()
        self._window_lock = threading.Lock()
        # where the current window's counts start: datagrams sent, replies (= RTTs) kept
        self._window_sent: int | None = None
        self._window_rtts = 0
        self.last_send: int | None = None

    def work(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as exc:
            self.last_error = _err_text(exc)
            return
        try:
            self._loop(sock)
        except Exception as exc:  # a bug must not leave the agent hanging
            self.last_error = _err_text(exc)
        finally:
            sock.close()

    def _loop(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        # connect() filters replies to the target's and reports ICMP errors; it
        # fails only while there is no route, which may come a little later
        while True:
            try:
                sock.connect(self.addr)
                break
            except OSError as exc:
                self.last_error = _err_text(exc)
                if self.stop_event.wait(0.1):
                    return
        pack = self.PACKET.pack
        deadline = time.monotonic_ns()
        while not self.stop_event.is_set():
            now = time.monotonic_ns()
            if now >= deadline:
                try:
                    sock.send(pack(self.nonce, self.sent, now))
                except OSError as exc:  # unreachable, refused, ENOBUFS: a lost probe
                    self.send_errors += 1
                    self.last_error = _err_text(exc)
                self.late_ns.append(now - deadline)
                self.sent_ns.append(now)
                self.sent += 1
                self.last_send = now
                deadline = _next_slot(deadline, now, self.interval)
            timeout = max(0, deadline - time.monotonic_ns()) / S
            readable, _, _ = select.select([sock], [], [], timeout)
            if readable:
                self._receive(sock)
        # drain late replies: at most 1 s, at least 100 ms, else twice the worst RTT
        worst = max(self.rtts_ns) if self.rtts_ns else 0
        end = time.monotonic_ns() + min(UDP_DRAIN_MAX_NS, max(100 * MS, 2 * worst))
        while self._outstanding() and (now := time.monotonic_ns()) < end:
            if select.select([sock], [], [], (end - now) / S)[0]:
                self._receive(sock)

    def _outstanding(self) -> int:
        base = self.first_seq if self.first_seq is not None else 0
        return (self.sent - base) - self.received

    def _receive(self, sock: socket.socket) -> None:
        unpack, size = self.PACKET.unpack_from, self.PACKET.size
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                return
            except OSError as exc:  # ECONNREFUSED from an ICMP error, etc.
                self.last_error = _err_text(exc)
                return
            now = time.monotonic_ns()
            if len(data) < size:
                continue
            nonce, seq, sent_at = unpack(data)
            if nonce != self.nonce or seq >= self.sent:
                continue
            if seq >= len(self.seen):
                self.seen.extend(bytes(seq - len(self.seen) + 65536))
            if self.seen[seq]:
                self.duplicates += 1
                continue
            self.seen[seq] = 1
            if self.first_seq is None:
                self.first_seq = seq
                self.first_ok = now
            elif seq < self.first_seq:
                continue  # a reordered warm-up reply: outside the window
            self.received += 1
            self.rtts_ns.append(now - sent_at)
            self.reply_seqs.append(seq)
            self.gaps.add(now)
            with self._window_lock:
                self.window.add(now)

    def cut_window(self, at: int) -> dict[str, Any]:
        """The largest gap since the previous cut (or the first reply), the open one
        closed at ``at``; the next window starts at the last reply before ``at``, so a gap
        that spans the cut shows whole in the next window too."""
        with self._window_lock:
            window, self.window = self.window, GapTracker()
            if window.last is not None:
                self.window.add(window.last)
        gap = window.result(end=at)
        # What the client got in the window: datagrams sent in it (from the first reply's
        # on, as the report counts), replies that came back in it, their median RTT.  A
        # reply to a datagram sent just before the cut counts in the next window.
        sent_from = self._window_sent if self._window_sent is not None else self.first_seq
        sent, replies = self.sent, len(self.rtts_ns)
        window_rtts = [r / MS for r in self.rtts_ns[self._window_rtts:replies]]
        self._window_sent, self._window_rtts = sent, replies
        return {"udp_window_max_gap_ms": ns_to_ms(gap.length),
                "udp_window_max_gap_start_ms": self.ms(int(gap.start)) if window.count else None,
                "udp_window_sent": 0 if sent_from is None else sent - sent_from,
                "udp_window_received": len(window_rtts),
                "udp_window_rtt_p50_ms": _round(percentile(window_rtts, 50))}

    def summary(self) -> dict[str, Any]:
        end = self.stop_at if self.stop_at is not None else time.monotonic_ns()
        gap = self.gaps.result(end=end)
        sent = self.sent - (self.first_seq or 0)
        rtts = [r / MS for r in self.rtts_ns]
        late = [x / MS for x in self.late_ns]
        return {
            "udp_sent": sent,
            "udp_received": self.received,
            "udp_lost": max(0, sent - self.received),
            "udp_rtt_p50_ms": _round(percentile(rtts, 50)),
            "udp_rtt_p99_ms": _round(percentile(rtts, 99)),
            "udp_max_gap_ms": ns_to_ms(gap.length),
            "udp_max_gap_start_ms": self.ms(int(gap.start)) if self.gaps.count else 0.0,
            "udp_max_gap_end_ms": (self.ms(int(gap.start + gap.length))
                                   if self.gaps.count else None),
            "udp_send_late_p99_ms": _round(percentile(late, 99)),
            "udp_send_late_max_ms": _round(max(late)) if late else None,
            "udp_loss_bursts": self.loss_bursts(),
            "udp_series": self.series(),
        }

    def series(self) -> list[list[float | int | None]]:
        """Every datagram from the first reply on, by when it was sent, with its RTT or
        as lost: ``stats.downsample``'s rows (ms on the agent's clock)."""
        rtt_of = dict(zip(self.reply_seqs, self.rtts_ns))
        return downsample([(self.ms(self.sent_ns[seq]),
                            rtt_of[seq] / MS if seq in rtt_of else None)
                           for seq in range(self.first_seq or 0, self.sent)])

    def loss_bursts(self) -> list[list[float]]:
        """Runs of consecutive unanswered datagrams, from the first reply on: ``[first
        sent ms, last sent ms, count]`` each, the first ``MAX_LOSS_BURSTS``."""
        bursts: list[list[float]] = []
        start = None
        for seq in range(self.first_seq or 0, self.sent + 1):
            lost = seq < self.sent and (seq >= len(self.seen) or not self.seen[seq])
            if lost and start is None:
                start = seq
            elif not lost and start is not None:
                bursts.append([self.ms(self.sent_ns[start]), self.ms(self.sent_ns[seq - 1]),
                               seq - start])
                start = None
                if len(bursts) == MAX_LOSS_BURSTS:
                    break
        return bursts


# --------------------------------------------------------------------- TCP

class TcpStream(ProbeThread):
    """One long-lived connection carrying numbered messages, echoes checked in order."""

    MESSAGE = struct.Struct("!QQ")  # sequence number, check word

    def __init__(self, target: str, port: int, t0: int, grace_s: float) -> None:
        super().__init__("tcp-stream", t0)
        self.addr = (target, port)
        self.grace_ns = int(grace_s * S)
        self.key = int.from_bytes(os.urandom(8), "big")
        self.connected_at: int | None = None
        self.sent = 0
        self.echoed = 0
        self.error: str | None = None
        self.gaps = GapTracker()

    def _check(self, seq: int) -> int:
        return (seq * 0x9E3779B97F4A7C15 ^ self.key) & 0xFFFFFFFFFFFFFFFF

    def work(self) -> None:
        sock = self._connect()
        if sock is None:
            return
        try:
            self._loop(sock)
        except OSError as exc:
            self.error = _err_text(exc)
        except Exception as exc:  # a bug must not leave the agent hanging
            self.error = f"agent bug: {_err_text(exc)}"
        finally:
            sock.close()

    def _connect(self) -> socket.socket | None:
        """Retry until connected (the service may still be starting) or stopped."""
        while not self.stop_event.is_set():
            try:
                sock = socket.create_connection(self.addr, timeout=1.0)
            except OSError as exc:
                self.last_error = f"connect {self.addr[0]}:{self.addr[1]}: {_err_text(exc)}"
                self.stop_event.wait(0.1)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self.connected_at = time.monotonic_ns()
            return sock
        return None

    def _loop(self, sock: socket.socket) -> None:
        size, pack, unpack = self.MESSAGE.size, self.MESSAGE.pack, self.MESSAGE.unpack_from
        outbuf, inbuf = bytearray(), bytearray()
        deadline = time.monotonic_ns()
        give_up: int | None = None
        while True:
            now = time.monotonic_ns()
            if give_up is None and self.stop_event.is_set():
                give_up = now + self.grace_ns
            if give_up is not None:
                if self.echoed >= self.sent or now >= give_up:
                    return
            elif now >= deadline:
                outbuf += pack(self.sent, self._check(self.sent))
                self.sent += 1
                deadline = _next_slot(deadline, now, TCP_INTERVAL_NS)
            wake = give_up if give_up is not None else deadline
            # while stopping, wake now and then anyway: the wait is bounded by give_up
            timeout = min(max(0, wake - time.monotonic_ns()) / S, ABORT_SLICE_S)
            readable, writable, _ = select.select([sock], [sock] if outbuf else [], [], timeout)
            if writable:
                try:
                    del outbuf[:sock.send(outbuf)]
                except BlockingIOError:
                    pass
            if readable:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    self.error = "connection closed by the peer"
                    return
                inbuf += data
                stamp = time.monotonic_ns()
                while len(inbuf) >= size:
                    seq, check = unpack(inbuf)
                    del inbuf[:size]
                    if seq != self.echoed or check != self._check(seq):
                        self.error = (f"echo corrupt or out of order: got #{seq}, "
                                      f"expected #{self.echoed}")
                        return
                    self.echoed += 1
                    self.gaps.add(stamp)
                    if self.first_ok is None:
                        self.first_ok = stamp  # ready: connected and echoing

    def summary(self) -> dict[str, Any]:
        end = self.stop_at if self.stop_at is not None else time.monotonic_ns()
        error = self.error
        if self.connected_at is None:
            error = error or f"never connected ({self.last_error or 'stopped first'})"
        elif error is None and self.echoed < self.sent:
            error = (f"{self.sent - self.echoed} message(s) not echoed within "
                     f"{self.grace_ns / S:g} s of stop")
        if self.is_alive() and error is None:
            error = "probe thread did not finish"
        return {
            "tcp_survived": error is None,
            "tcp_echoes": self.echoed,
            "tcp_max_gap_ms": ns_to_ms(self.gaps.result(end=end).length),
            "tcp_error": error,
        }


# -------------------------------------------------------------------- HTTP

@dataclass(frozen=True)
class HttpResult:
    """One GET: ``ms`` is connect + request + full response."""

    ok: bool
    ms: float
    status: int | None = None
    error: str | None = None


class _Aborted(Exception):
    pass


def _wait(sock: socket.socket, *, write: bool, deadline: float,
          abort: threading.Event | None) -> None:
    """Block until ``sock`` is ready, the deadline passes or ``abort`` is set."""
    while True:
        if abort is not None and abort.is_set():
            raise _Aborted
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        r, w, _ = select.select([] if write else [sock], [sock] if write else [], [],
                                min(left, ABORT_SLICE_S))
        if r or w:
            return


def http_get(host: str, port: int, timeout_s: float,
             abort: threading.Event | None = None) -> HttpResult | None:
    """``GET /`` over a new connection (HTTP/1.0, ``Connection: close``).

    Returns None when ``abort`` was set mid-request (nothing to count).
    ok means a complete response with a 2xx or 3xx status.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    request = (f"GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: wanmig-probe\r\n"
               "Connection: close\r\n\r\n").encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    status: int | None = None
    try:
        sock.setblocking(False)
        if (rc := sock.connect_ex((host, port))) not in (0, 115):  # 115: EINPROGRESS
            raise OSError(rc, os.strerror(rc))
        _wait(sock, write=True, deadline=deadline, abort=abort)
        if rc := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            raise OSError(rc, os.strerror(rc))
        view = memoryview(request)
        while view:
            _wait(sock, write=True, deadline=deadline, abort=abort)
            view = view[sock.send(view):]
        response = bytearray()
        body_at: int | None = None
        length: int | None = None
        while True:
            _wait(sock, write=False, deadline=deadline, abort=abort)
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
            if body_at is None and (end := response.find(b"\r\n\r\n")) >= 0:
                body_at = end + 4
                status, length = parse_http_head(bytes(response[:end]))
            if body_at is not None and length is not None \
                    and len(response) - body_at >= length:
                break
            if len(response) > 1 << 20:
                break  # enough to know the server answers
        if body_at is None:
            status, _ = parse_http_head(bytes(response))
            raise ConnectionError("incomplete response" if response else "empty response")
        elapsed = (time.monotonic() - start) * 1000
        ok = status is not None and 200 <= status < 400
        return HttpResult(ok, round(elapsed, 3), status, None if ok else f"HTTP {status}")
    except _Aborted:
        return None
    except (OSError, ValueError) as exc:
        elapsed = (time.monotonic() - start) * 1000
        return HttpResult(False, round(elapsed, 3), status, _err_text(exc))
    finally:
        sock.close()


def parse_http_head(head: bytes) -> tuple[int | None, int | None]:
    """Status code and Content-Length from a response head (None where absent)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") \
        and parts[1].isdigit() else None
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    return status, length


class NameResolver:
    """The VM's address by name through one DNS server, as a caching stub resolver asks
    it: an answer is reused until its TTL runs out (dnspython's cache).  Every change
    of the answer is kept, with the agent's clock (``answers``)."""

    def __init__(self, name: str, server: str, clock: ProbeThread) -> None:
        import dns.resolver   # only agents that resolve by name need it

        self.name, self.clock = name, clock
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers = [server]
        self.resolver.cache = dns.resolver.Cache()
        self.resolver.lifetime = 1.0
        self.answers: list[list[Any]] = []   # [t_ms, address] at each change
        self._lock = threading.Lock()

    def address(self) -> str | None:
        """The address now (None: no answer); a change is noted."""
        import dns.exception

        try:
            address = str(self.resolver.resolve(self.name, "A")[0])
        except dns.exception.DNSException:
            return None
        with self._lock:
            if not self.answers or self.answers[-1][1] != address:
                self.answers.append([self.clock.ms(time.monotonic_ns()), address])
        return address


class HttpLoop(ProbeThread):
    """A new connection and ``GET /`` every 200 ms, counted from the first success.  With
    a ``NameResolver`` the address is looked up before each connection, and the first
    answered request at each address is kept (``http_first_ok_ms``)."""

    def __init__(self, target: str, port: int, t0: int, timeout_s: float,
                 resolver: NameResolver | None = None) -> None:
        super().__init__("http-loop", t0)
        self.target, self.port, self.timeout_s = target, port, timeout_s
        self.resolver = resolver
        self.first_ok_at: dict[str, float] = {}
        self.ok = 0
        self.failed = 0
        self.failed_1s = 0      # failed, or answered after HTTP_CLIENT_DEADLINE_MS
        self.latencies_ms: list[float] = []
        self.requests: list[tuple[float, float | None]] = []   # (sent ms, latency; None: failed)
        self.gaps = GapTracker()

    def work(self) -> None:
        deadline = time.monotonic_ns()
        while not self.stop_event.is_set():
            target = self.resolver.address() if self.resolver else self.target
            result = (http_get(target, self.port, self.timeout_s, abort=self.stop_event)
                      if target else HttpResult(False, 0.0, error="no DNS answer"))
            now = time.monotonic_ns()
            if result is not None:
                self._record(result, now)
                if result.ok and target and target not in self.first_ok_at:
                    self.first_ok_at[target] = self.ms(now)
            deadline = _next_slot(deadline, now, HTTP_INTERVAL_NS)
            self.stop_event.wait(max(0, deadline - time.monotonic_ns()) / S)

    def _record(self, result: HttpResult, now: int) -> None:
        if self.first_ok is not None or result.ok:
            self.requests.append((self.ms(now) - result.ms, result.ms if result.ok else None))
        if self.first_ok is not None and (not result.ok or result.ms > HTTP_CLIENT_DEADLINE_MS):
            self.failed_1s += 1
        if result.ok:
            if self.first_ok is None:
                self.first_ok = now
            self.ok += 1
            self.latencies_ms.append(result.ms)
            self.gaps.add(now)
        else:
            self.last_error = result.error
            if self.first_ok is not None:  # failures while the service starts do not count
                self.failed += 1

    def summary(self) -> dict[str, Any]:
        end = self.stop_at if self.stop_at is not None else time.monotonic_ns()
        return {
            "http_ok": self.ok,
            "http_failed": self.failed,
            "http_failed_1s": self.failed_1s,
            "http_first_ok_ms": dict(self.first_ok_at) if self.resolver else None,
            "dns_answers": list(self.resolver.answers) if self.resolver else None,
            "http_max_gap_ms": ns_to_ms(self.gaps.result(end=end).length),
            "http_latency_p50_ms": _round(percentile(self.latencies_ms, 50)),
            "http_latency_max_ms": max(self.latencies_ms) if self.latencies_ms else None,
            "http_series": downsample(self.requests),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
