"""``ClientProbe``: the orchestrator's handle on one probe agent process.

The agent (``wanmig.probe.agent``) does the timing-sensitive work in its own
process, inside the client's network namespace; this class only starts it,
exchanges JSON lines with it and always reaps it.  Its life is explicit::

    IDLE ──start()──> STARTING ──ready──> RUNNING ──stop()──> STOPPING ──> STOPPED
                          │                   │
                          └── failure / kill ─┴──────────────────────────> STOPPED

Every wait has a timeout; a failure (agent not ready, agent died, no answer)
raises ``ProbeError`` carrying the agent's own message or the tail of its
stderr.  The agent runs in its own session, so a Ctrl-C aimed at the
orchestrator does not kill it before its report is read; and it stops by
itself when its stdin closes, so a crashed orchestrator does not leave it
running.  The agent's UDP thread runs SCHED_FIFO (``rt_priority``, 0 to
disable; silently ordinary when not permitted, see ``ready_info``).
``__aexit__`` kills an agent that was not stopped (its report is
then lost: call ``stop()`` to get one).

Typical use::

    async with ClientProbe("10.0.0.10", netns="wm-client") as probe:
        await probe.mark("switchover")
        ...
        report = await probe.stop()
"""

from __future__ import annotations

import asyncio
import collections
import enum
import json
import logging
import sys
import time
from types import TracebackType
from typing import Any

from ..children import reap, sigkill
from ..errors import ProbeError
from ..registry import Registry
from .report import ProbeReport

STDERR_TAIL_LINES = 20


class ProbeState(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def agent_argv(target: str, *, netns: str | None, udp_port: int, tcp_port: int,
               http_port: int, interval_ms: float, python: str, ready_timeout: float,
               rt_priority: int = 10, owner: str | None = None) -> list[str]:
    """The agent's command line; pure so that unit tests can check it."""
    argv = [python, "-m", "wanmig.probe.agent", "--target", target,
            "--udp-port", str(udp_port), "--tcp-port", str(tcp_port),
            "--http-port", str(http_port), "--interval-ms", f"{interval_ms:g}",
            "--ready-timeout", f"{ready_timeout:g}", "--rt-priority", str(rt_priority)]
    if owner:
        argv += ["--owner", owner]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return argv


class ClientProbe:
    """Runs the probe agent against ``target``; use as ``async with``."""

    def __init__(self, target: str, *, netns: str | None = None, udp_port: int = 7,
                 tcp_port: int = 7, http_port: int = 80, interval_ms: float = 1.0,
                 python: str = sys.executable, rt_priority: int = 10,
                 registry: Registry | None = None) -> None:
        self.target = target
        self.netns = netns
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.http_port = http_port
        self.interval_ms = interval_ms
        self.python = python
        self.rt_priority = rt_priority
        self.registry = registry
        self.state = ProbeState.IDLE
        self.ready_info: dict[str, Any] = {}
        self.report: ProbeReport | None = None
        self.log = logging.getLogger(f"wanmig.probe.{netns or 'local'}")
        self._proc: asyncio.subprocess.Process | None = None
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._eof = False
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._readers: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (f"ClientProbe(target={self.target!r}, netns={self.netns!r}, "
                f"state={self.state.value}, pid={self.pid})")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- lifetime ---------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Spawn the agent and wait until every probe has succeeded once."""
        if self.state is not ProbeState.IDLE:
            raise ProbeError(f"cannot start a probe in state {self.state.value}")
        self.state = ProbeState.STARTING
        # the agent gives up a little earlier, so that its own reason arrives in time
        argv = agent_argv(self.target, netns=self.netns, udp_port=self.udp_port,
                          tcp_port=self.tcp_port, http_port=self.http_port,
                          interval_ms=self.interval_ms, python=self.python,
                          ready_timeout=max(0.5, timeout - 1.0),
                          rt_priority=self.rt_priority,
                          owner=str(self.registry.run_dir) if self.registry else None)
        self.log.debug("exec %s", " ".join(argv))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=1 << 20)
        except OSError as exc:
            self.state = ProbeState.STOPPED
            raise ProbeError(f"cannot run the probe agent: {exc}", cause=exc) from exc
        if self.registry:
            self.registry.add_pid(self._proc.pid)
        self._readers = [asyncio.create_task(self._read_events()),
                         asyncio.create_task(self._read_stderr())]
        try:
            self.ready_info = await self._next_event("ready", timeout, "ready")
        except BaseException:
            await self.kill()
            raise
        self.state = ProbeState.RUNNING
        self.log.debug("agent ready: %s", self.ready_info)

    async def stop(self, timeout: float = 15.0) -> ProbeReport:
        """Stop the probes and return their report; the process is always reaped."""
        if self.state is ProbeState.STOPPED and self.report is not None:
            return self.report
        if self.state is not ProbeState.RUNNING:
            raise ProbeError(f"cannot stop a probe in state {self.state.value}")
        self.state = ProbeState.STOPPING
        deadline = time.monotonic() + timeout
        try:
            event = await self._command("stop", "report", timeout, stopping=True)
            try:
                self.report = ProbeReport.from_dict(event)
            except (ValueError, TypeError) as exc:
                raise ProbeError(f"unreadable probe report: {exc}", cause=exc) from exc
            return self.report
        finally:
            await self._reap(max(1.0, deadline - time.monotonic()))

    async def kill(self) -> None:
        """SIGKILL the agent if it runs, and reap it.  Idempotent."""
        if self._proc is not None:
            sigkill(self._proc)
        await self._reap(5.0)

    async def _reap(self, timeout: float) -> None:
        proc = self._proc
        if proc is not None:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()  # EOF tells the agent to stop
            await reap(proc, timeout)
            if self.registry:
                self.registry.drop_pid(proc.pid)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers = []
        self.state = ProbeState.STOPPED

    async def __aenter__(self) -> ClientProbe:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.state is not ProbeState.STOPPED:
            await self.kill()

    # -- commands -----------------------------------------------------------

    async def mark(self, name: str, timeout: float = 5.0) -> float:
        """Record a named instant in the agent's clock; returns it (ms since agent start)."""
        if not name.strip() or "\n" in name:
            raise ProbeError(f"bad mark name {name!r}")
        event = await self._command(f"mark {name.strip()}", "marked", timeout)
        return float(event["t_ms"])

    async def new_connection_ms(self, timeout: float = 10.0) -> float | None:
        """Open a new TCP connection and GET /; its time in ms, or None if it failed."""
        agent_timeout = max(0.1, min(timeout - 0.5, timeout * 0.9))
        event = await self._command(f"newconn {agent_timeout:g}", "newconn", timeout)
        if not event.get("ok"):
            self.log.info("new connection failed: %s", event.get("error"))
            return None
        return float(event["ms"])

    async def _command(self, line: str, expected: str, timeout: float, *,
                       stopping: bool = False) -> dict[str, Any]:
        """Send one command and await its answer; one command at a time."""
        if self.state is not (ProbeState.STOPPING if stopping else ProbeState.RUNNING):
            raise ProbeError(f"probe is {self.state.value}, cannot {line.split()[0]}")
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._lock.acquire()
        except TimeoutError as exc:
            raise ProbeError(f"probe busy: {line.split()[0]} not sent within {timeout:g} s",
                             cause=exc) from exc
        try:
            await self._send(line, timeout)
            return await self._next_event(expected, deadline - time.monotonic(),
                                          line.split()[0])
        finally:
            self._lock.release()

    # -- plumbing -----------------------------------------------------------

    async def _send(self, line: str, timeout: float) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(line.encode() + b"\n")
            await asyncio.wait_for(self._proc.stdin.drain(), timeout=max(0.1, timeout))
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ProbeError(await self._exit_message(line.split()[0]), cause=exc) from exc
        except asyncio.TimeoutError as exc:
            raise ProbeError("probe agent does not read its commands", cause=exc) from exc

    async def _next_event(self, expected: str, timeout: float, what: str) -> dict[str, Any]:
        """The next event named ``expected``; ProbeError on error event, exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self._eof and self._events.empty():
                raise ProbeError(await self._exit_message(what))
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                event = await asyncio.wait_for(self._events.get(), timeout=left)
            except asyncio.TimeoutError as exc:
                raise ProbeError(f"probe agent gave no {what} answer within {timeout:g} s"
                                 f" ({self._stderr_tail()})", cause=exc) from exc
            if event is None:
                continue  # EOF: reported by the check at the top
            name = event.get("event")
            if name == "error":
                raise ProbeError(f"probe agent: {event.get('message', 'unknown error')}")
            if name == expected:
                return event
            self.log.debug("ignored agent event while waiting for %s: %s", expected, event)

    async def _exit_message(self, what: str) -> str:
        # give the process a moment to exit and its stderr to be read: that is the why
        if self._proc is not None:
            try:
                await asyncio.wait_for(self._proc.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
        if self._readers[1:]:
            await asyncio.wait(self._readers[1:], timeout=1.0)
        code = self._proc.returncode if self._proc else None
        status = f"code {code}" if code is not None else "closed its output"
        return f"probe agent exited ({status}) before {what}: {self._stderr_tail()}"

    def _stderr_tail(self, lines: int = 3) -> str:
        return " | ".join(list(self._stderr)[-lines:]) or "no stderr"

    async def _read_events(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            async for raw in self._proc.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    self.log.warning("agent printed a non-JSON line: %r", raw[:200])
                    continue
                if isinstance(event, dict):
                    await self._events.put(event)
        finally:
            self._eof = True
            self._events.put_nowait(None)

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                self.log.debug("agent: %s", line)
