"""The probe agent: a separate process that uses the VM the way a client would.

Run as ``python -m wanmig.probe.agent --target IP [...]``, usually through
``ip netns exec CLIENT_NS`` so that it sits where a client sits.  It is its own
process so that the orchestrator's event loop (QMP, tc, subprocesses) cannot
delay a probe, and so that ``ClientProbe`` only has to speak JSON lines.

Three probes run at once, one thread each (probes.py): UDP echo every 1 ms
(its largest reply gap is the client-visible outage), one long-lived TCP
echo stream (did it survive?), and HTTP GETs on new connections.  The
threads ask for SCHED_FIFO (``--rt-priority``, when root; UDP one step above
the rest) and objects alive at start are frozen out of the cyclic GC, so that
a busy machine or a GC pass does not delay a send; how late sends were anyway
is in the report.

Control protocol, JSON lines on stdout, plain commands on stdin::

    -> {"event": "ready", "t_ms": .., ...}       UDP and TCP echoed, HTTP answered once
    -> {"event": "error", "message": .., "fatal": true}   not ready in time; exit 1
    <- mark NAME          -> {"event": "marked", "name": .., "t_ms": ..,
                              "udp_window_max_gap_ms": .., "udp_window_max_gap_start_ms": ..,
                              "udp_window_sent": .., "udp_window_received": ..,
                              "udp_window_rtt_p50_ms": ..}
                             (since the previous mark, or the first reply: the largest
                             UDP gap, echoes sent and answered, their median RTT)
    <- newconn [TIMEOUT]  -> {"event": "newconn", "ms": .., "ok": .., "error": ..}
    <- stop (or EOF)      -> {"event": "report", ...ProbeReport fields...}; exit 0

An unknown command answers ``{"event": "error", "fatal": false, ...}``.
SIGTERM/SIGINT act like ``stop``.  Stopping is bounded whatever the target
does: UDP drains late replies for at most 1 s, TCP waits at most
``--tcp-grace`` seconds for its last echo, an HTTP request in flight is
abandoned.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, TextIO

from ..realtime import set_realtime
from .probes import (
    HTTP_TIMEOUT_S,
    MS,
    HttpLoop,
    HttpResult,
    NameResolver,
    ProbeThread,
    S,
    TcpStream,
    UdpEcho,
    http_get,
)
from .report import ProbeReport
from .stats import ns_to_ms


class Emitter:
    """Writes JSON lines to stdout from any thread; a closed pipe is not an error."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields})
        with self._lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (BrokenPipeError, ValueError):
                pass  # the controller went away; the report is lost, nothing to do



# -------------------------------------------------------------------- agent

class _StopSignal(Exception):
    """Raised from a SIGTERM/SIGINT handler to break out of a blocking read."""


class Agent:
    """The three probes, their marks, and the command loop."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.emitter = Emitter(out)
        self.t0 = time.monotonic_ns()
        self.cpu0 = _cpu_s()
        self.marks: dict[str, float] = {}
        self.udp = UdpEcho(args.target, args.udp_port, int(args.interval_ms * MS), self.t0)
        self.tcp = TcpStream(args.target, args.tcp_port, self.t0, args.tcp_grace)
        self.http = HttpLoop(args.target, args.http_port, self.t0, args.http_timeout)
        if args.name:
            self.http.resolver = NameResolver(args.name, args.dns, self.http)
        self.probes: tuple[ProbeThread, ...] = (self.udp, self.tcp, self.http)
        if args.rt_priority > 0:
            for probe in self.probes:
                probe.rt_priority = max(1, args.rt_priority - (probe is not self.udp))

    def __repr__(self) -> str:
        ready = {p.name: p.ready for p in self.probes}
        return f"Agent(target={self.args.target!r}, ready={ready})"

    def ms_now(self) -> float:
        return ns_to_ms(time.monotonic_ns() - self.t0)

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not all(p.ready for p in self.probes):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def not_ready_reasons(self) -> str:
        parts = []
        if not self.udp.ready:
            parts.append(f"udp {self.args.target}:{self.args.udp_port}: no reply to "
                         f"{self.udp.sent} datagrams"
                         + (f" ({self.udp.last_error})" if self.udp.last_error else ""))
        if self.tcp.connected_at is None:
            parts.append(f"tcp: {self.tcp.last_error or 'not connected'}")
        elif not self.tcp.ready:
            parts.append(f"tcp {self.args.target}:{self.args.tcp_port}: connected, "
                         f"{self.tcp.error or 'but no echo'}")
        if not self.http.ready:
            parts.append(f"http {self.args.target}:{self.args.http_port}: "
                         f"{self.http.last_error or 'no response'}")
        return "; ".join(parts)

    def stop(self) -> ProbeReport:
        """Stop every probe (bounded) and summarise."""
        at = time.monotonic_ns()
        for probe in self.probes:
            probe.request_stop(at)
        limit = time.monotonic() + self.args.tcp_grace + 2.0
        for probe in self.probes:
            if probe.ident is not None:  # started
                probe.join(timeout=max(0.0, limit - time.monotonic()))
        wall = (time.monotonic_ns() - self.t0) / S
        cpu = _cpu_s() - self.cpu0
        return ProbeReport(
            **self.udp.summary(), **self.tcp.summary(), **self.http.summary(),
            marks=dict(self.marks), duration_ms=ns_to_ms(at - self.t0),
            agent_cpu_pct=round(100.0 * cpu / wall, 1) if wall > 0 else None)

    def handle(self, line: str) -> bool:
        """Run one command; False when the agent should stop."""
        command, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if command == "stop":
            return False
        if command == "mark":
            if not rest:
                self.emitter.emit("error", message="mark needs a name", fatal=False)
            else:
                now = time.monotonic_ns()
                self.marks[rest] = t_ms = ns_to_ms(now - self.t0)
                self.emitter.emit("marked", name=rest, t_ms=t_ms, **self.udp.cut_window(now))
        elif command == "newconn":
            try:
                timeout = float(rest) if rest else self.args.http_timeout
            except ValueError:
                self.emitter.emit("error", message=f"bad timeout {rest!r}", fatal=False)
                return True
            target = (self.http.resolver.address() if self.http.resolver
                      else self.args.target)
            result = (http_get(target, self.args.http_port, timeout) if target
                      else HttpResult(False, 0.0, error="no DNS answer"))
            assert result is not None  # no abort flag given
            self.emitter.emit("newconn", ms=result.ms, ok=result.ok, status=result.status,
                              error=result.error, t_ms=self.ms_now(), address=target)
        elif command:
            self.emitter.emit("error", message=f"unknown command {command!r}", fatal=False)
        return True

    def run(self, stdin: TextIO) -> int:
        # everything imported so far lives for the whole run: keep it out of the
        # cyclic GC, whose full passes would otherwise hold the GIL for milliseconds
        gc.freeze()
        for probe in self.probes:
            probe.start()
        # after the threads started (they would inherit it): a main thread holding
        # the GIL must not be preempted by ordinary load while a probe waits for it
        if self.args.rt_priority > 0:
            set_realtime(max(1, self.args.rt_priority - 1))
        try:
            if not self.wait_ready(self.args.ready_timeout):
                reasons = self.not_ready_reasons()
                self.stop()
                self.emitter.emit("error", fatal=True, message=(
                    f"probes not ready after {self.args.ready_timeout:g} s: {reasons}"))
                return 1
            self.emitter.emit(
                "ready", t_ms=self.ms_now(), pid=os.getpid(),
                udp_rtt_ms=ns_to_ms(self.udp.rtts_ns[0]) if self.udp.rtts_ns else None,
                udp_realtime=self.udp.realtime,
                tcp_connected_ms=ns_to_ms((self.tcp.connected_at or self.t0) - self.t0))
            while True:
                line = stdin.readline()
                if not line or not self.handle(line):
                    break
        except _StopSignal:
            pass
        report = self.stop()
        self.emitter.emit("report", **report.to_dict(),
                          udp_max_gap_vs_marks=report.udp_max_gap_vs_marks())
        return 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wanmig.probe.agent",
                                description="Client-side probes of a migrating VM.")
    p.add_argument("--target", required=True, help="IPv4 address of the VM")
    p.add_argument("--udp-port", type=int, default=7)
    p.add_argument("--tcp-port", type=int, default=7)
    p.add_argument("--http-port", type=int, default=80)
    p.add_argument("--name", default=None,
                   help="resolve the VM by this name for new HTTP connections (with --dns)")
    p.add_argument("--dns", default=None, help="the DNS server --name is asked of")
    p.add_argument("--interval-ms", type=float, default=1.0, help="UDP send interval")
    p.add_argument("--ready-timeout", type=float, default=30.0)
    p.add_argument("--tcp-grace", type=float, default=3.0,
                   help="seconds to wait at stop for the last TCP echo")
    p.add_argument("--http-timeout", type=float, default=HTTP_TIMEOUT_S)
    p.add_argument("--rt-priority", type=int, default=10,
                   help="SCHED_FIFO priority of the UDP thread, the others one less "
                        "(0: ordinary scheduling)")
    p.add_argument("--owner", default=None,
                   help="ignored; names the owning run so `wanmig clean` can find us")
    args = p.parse_args(argv)
    if args.interval_ms <= 0:
        p.error("--interval-ms must be positive")
    if bool(args.name) != bool(args.dns):
        p.error("--name and --dns go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # the probe threads wake every millisecond: let them take the GIL promptly
    sys.setswitchinterval(0.0005)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _StopSignal

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return Agent(args, sys.stdout).run(sys.stdin)


if __name__ == "__main__":
    sys.exit(main())
