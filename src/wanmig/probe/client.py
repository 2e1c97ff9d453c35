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

import enum
import logging
import sys
import time
from types import TracebackType
from typing import Any

from ..children import JsonLinesChild
from ..errors import ProbeError
from ..registry import Registry
from .report import ProbeReport


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
        self._agent: JsonLinesChild | None = None

    def __repr__(self) -> str:
        return (f"ClientProbe(target={self.target!r}, netns={self.netns!r}, "
                f"state={self.state.value}, pid={self.pid})")

    @property
    def pid(self) -> int | None:
        return self._agent.pid if self._agent else None

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
        self._agent = JsonLinesChild(argv, name="probe agent", error=ProbeError,
                                     registry=self.registry, log=self.log)
        try:
            await self._agent.spawn()
            self.ready_info = await self._agent.next_event("ready", timeout)
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
            if self._agent is not None:  # EOF tells the agent to stop
                await self._agent.close(max(1.0, deadline - time.monotonic()))
            self.state = ProbeState.STOPPED

    async def kill(self) -> None:
        """SIGKILL the agent if it runs, and reap it.  Idempotent."""
        if self._agent is not None:
            await self._agent.kill()
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
        assert self._agent is not None
        return await self._agent.command(line, expected, timeout)
