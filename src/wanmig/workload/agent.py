"""The web-load agent: a separate process that keeps a stream of HTTP clients coming.

Run as ``python -m wanmig.workload.agent --target IP [...]`` (the options are
``WebLoadSpec``'s), usually through ``ip netns exec CLIENT_NS``, so that the
requests come from where the clients are.  It is its own process so that the
orchestrator's event loop cannot delay the load, and so that ``WebLoad`` only
has to speak JSON lines (``wanmig.children.JsonLinesChild``).

Every request is HTTP/1.0 ``GET`` on a new TCP connection, with a deadline
covering connect to last byte.  Requests start on a fixed schedule (``rate``
per second, absolute deadlines), independent of how long earlier ones take,
so several are in flight at once; the paths are cycled in the given order.
A slot that comes while ``max_in_flight`` requests are outstanding, or that
the agent reached more than one interval late, is skipped and counted, not
sent later in a burst.  One asyncio loop does it all: the load is I/O-bound,
and a few hundred connections per second are far within what it can issue;
its timing is not a measurement (that is the probe agent's job).

Before it counts anything the agent waits until the first path answers once
(``--ready-timeout``): start-up noise such as ARP resolution is not a failure.

Control protocol, JSON lines on stdout, plain commands on stdin::

    -> {"event": "ready", "t_ms": .., "pid": .., "first_ms": ..}   first GET answered
    -> {"event": "error", "message": .., "fatal": true}   not ready in time; exit 1
    <- mark NAME          -> {"event": "marked", "name": .., "t_ms": ..}
    <- stop (or EOF)      -> {"event": "report", ...WebLoadReport fields...}; exit 0

An unknown command answers ``{"event": "error", "fatal": false, ...}``.
SIGTERM/SIGINT act like ``stop``.  Stopping is immediate: requests in flight
are cancelled and counted as abandoned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from typing import TextIO

from ..errors import ConfigError
from ..probe.agent import Emitter
from ..probe.probes import parse_http_head  # one HTTP head parser for both agents
from ..probe.stats import ns_to_ms
from .report import RequestOutcome, WebTally
from .spec import WebLoadSpec

READ_CHUNK = 65536
MAX_HEAD_BYTES = 16384
READY_RETRY_S = 0.05


def request_bytes(host: str, path: str) -> bytes:
    """The whole request: HTTP/1.0, so the server closes after the response."""
    if ":" in host:  # an IPv6 literal is bracketed in a Host header
        host = f"[{host}]"
    return (f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: wanmig-webload\r\n"
            "Connection: close\r\n\r\n").encode()


def error_kind(exc: BaseException) -> str:
    """A short, countable name for a failure ("Connection refused", "timeout", ...)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        # by errno: asyncio's "Connect call failed ('10.0.0.1', 80)" would count each
        # address apart
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


class Request:
    """One request in progress: its path, start and bytes read so far."""

    __slots__ = ("bytes_received", "path", "start_ns")

    def __init__(self, path: str) -> None:
        self.path = path
        self.start_ns = time.monotonic_ns()
        self.bytes_received = 0

    def __repr__(self) -> str:
        return f"Request({self.path!r}, bytes_received={self.bytes_received})"

    async def run(self, host: str, port: int, timeout_s: float) -> RequestOutcome:
        """GET the path on a new connection; never raises except CancelledError."""
        error: str | None = None
        timed_out = False
        try:
            async with asyncio.timeout(timeout_s):
                status = await self._exchange(host, port)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except Exception as exc:  # every failure is counted, none is fatal to the load
            # the deadline of asyncio.timeout() arrives as TimeoutError; CancelledError
            # (a BaseException) is not caught: a cancelled request is abandoned, not failed
            error = error_kind(exc)
            timed_out = isinstance(exc, TimeoutError)
        return RequestOutcome(self.path, error is None, self.start_ns, time.monotonic_ns(),
                              self.bytes_received, error, timed_out)

    async def _exchange(self, host: str, port: int) -> int:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD_BYTES)
        try:
            writer.write(request_bytes(host, self.path))
            await writer.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                self.bytes_received += len(exc.partial)
                raise EOFError("incomplete response" if exc.partial
                               else "empty response") from exc
            self.bytes_received += len(head)
            status, length = parse_http_head(head[:-4])
            if status is None:
                raise ValueError("not an HTTP response")
            body = 0
            while length is None or body < length:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    break
                body += len(chunk)
                self.bytes_received += len(chunk)
            if length is not None and body < length:
                raise EOFError("incomplete response")
            return status
        finally:
            writer.close()  # RST or FIN, whichever: the server is done with us


class Agent:
    """The schedule, the requests in flight, the tally and the command loop."""

    def __init__(self, spec: WebLoadSpec, out: TextIO, ready_timeout_s: float) -> None:
        self.spec = spec
        self.emitter = Emitter(out)
        self.ready_timeout_s = ready_timeout_s
        self.t0 = time.monotonic_ns()
        self.tally: WebTally | None = None
        self.stopping = asyncio.Event()
        self._pending: dict[asyncio.Task[None], Request] = {}

    def __repr__(self) -> str:
        return f"Agent(target={self.spec.target!r}, tally={self.tally!r})"

    # -- phases -----------------------------------------------------------

    async def wait_ready(self) -> RequestOutcome | None:
        """Retry the first path until it answers; the most telling failure (None if stopped).

        An attempt cut short by the deadline says only "timeout"; an earlier
        attempt's own error (connection refused, say) is the better reason.
        """
        deadline = time.monotonic() + self.ready_timeout_s
        last: RequestOutcome | None = None
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return last
            outcome = await Request(self.spec.paths[0]).run(
                self.spec.target, self.spec.port, min(self.spec.request_timeout_s, left))
            if outcome.ok:
                return outcome
            if last is None or outcome.error != "timeout":
                last = outcome
            await self._sleep_unless_stopping(min(READY_RETRY_S, max(0.0, left)))
        return None

    async def load(self, tally: WebTally) -> None:
        """Issue requests on schedule until stopped."""
        interval_ns = round(1e9 / self.spec.rate_per_s)
        due = tally.start_ns
        issued = 0
        while not self.stopping.is_set():
            now = time.monotonic_ns()
            if due > now:
                await self._sleep_unless_stopping((due - now) / 1e9)
                continue
            if now - due > interval_ns:  # more than one slot late: drop the missed ones
                missed = (now - due) // interval_ns
                tally.skip(missed)
                due += missed * interval_ns
            if len(self._pending) >= self.spec.max_in_flight:
                tally.skip()
            else:
                self._issue(self.spec.paths[issued % len(self.spec.paths)], tally)
                issued += 1
            due += interval_ns

    def _issue(self, path: str, tally: WebTally) -> None:
        request = Request(path)
        tally.issued()

        async def go() -> None:
            outcome = await request.run(self.spec.target, self.spec.port,
                                        self.spec.request_timeout_s)
            tally.finished(outcome)  # at completion, so in completion order

        task = asyncio.create_task(go())
        self._pending[task] = request
        task.add_done_callback(self._pending.pop)

    async def abandon_in_flight(self, tally: WebTally) -> None:
        pending = dict(self._pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task, request in pending.items():
            if task.cancelled():  # a task that finished meanwhile was already counted
                tally.abandoned_one(request.bytes_received)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    # -- commands -----------------------------------------------------------

    def handle(self, line: str) -> None:
        """Run one command line (EOF arrives as None via ``commands``)."""
        command, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if command == "stop":
            self.stopping.set()
        elif command == "mark":
            if not rest:
                self.emitter.emit("error", message="mark needs a name", fatal=False)
            elif self.tally is None:
                self.emitter.emit("error", message="not ready yet", fatal=False)
            else:
                t_ms = self.tally.mark(rest, time.monotonic_ns())
                self.emitter.emit("marked", name=rest, t_ms=t_ms)
        elif command:
            self.emitter.emit("error", message=f"unknown command {command!r}", fatal=False)

    async def commands(self, stdin: TextIO) -> None:
        """Read stdin in a thread (works for pipes, files and ttys alike); EOF stops."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        def reader() -> None:
            try:
                for line in stdin:
                    loop.call_soon_threadsafe(lines.put_nowait, line)
                loop.call_soon_threadsafe(lines.put_nowait, None)
            except RuntimeError:
                pass  # the loop has closed: the agent is exiting anyway

        threading.Thread(target=reader, name="stdin", daemon=True).start()
        while (line := await lines.get()) is not None:
            self.handle(line)
        self.stopping.set()

    # -- main -----------------------------------------------------------------

    async def run(self, stdin: TextIO) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        command_task = asyncio.create_task(self.commands(stdin))
        try:
            first = await self.wait_ready()
            if first is None:
                self.emitter.emit("error", fatal=True, message="stopped before ready")
                return 1
            if not first.ok:
                self.emitter.emit("error", fatal=True, message=(
                    f"http://{self.spec.target}:{self.spec.port}{self.spec.paths[0]} not "
                    f"answering after {self.ready_timeout_s:g} s: {first.error}"))
                return 1
            self.tally = tally = WebTally(time.monotonic_ns())
            self.emitter.emit("ready", t_ms=ns_to_ms(tally.start_ns - self.t0),
                              pid=os.getpid(), first_ms=first.latency_ms)
            await self.load(tally)
            end = time.monotonic_ns()
            await self.abandon_in_flight(tally)
            report = tally.report(end, target=self.spec.target,
                                  rate_per_s=self.spec.rate_per_s)
            self.emitter.emit("report", **report.to_dict())
            return 0
        finally:
            command_task.cancel()


def parse_args(argv: list[str] | None = None) -> tuple[WebLoadSpec, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m wanmig.workload.agent",
                                description="HTTP request load on a (migrating) VM.")
    WebLoadSpec.add_arguments(p)
    p.add_argument("--ready-timeout", type=float, default=30.0)
    p.add_argument("--owner", default=None,
                   help="ignored; names the owning run so `wanmig clean` can find us")
    args = p.parse_args(argv)
    try:
        return WebLoadSpec.from_args(args), args
    except ConfigError as exc:
        p.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    spec, args = parse_args(argv)
    return asyncio.run(Agent(spec, sys.stdout, args.ready_timeout).run(sys.stdin))


if __name__ == "__main__":
    sys.exit(main())
