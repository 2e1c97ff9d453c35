"""``WebLoad``: the orchestrator's handle on one web-load agent process.

The agent (``wanmig.workload.agent``) runs inside the client's network
namespace and sends HTTP requests to the guest's web server at a steady rate;
this class starts it through ``JsonLinesChild`` (the same plumbing as the
probe agent's), exchanges JSON lines with it and always reaps it.  Its life::

    IDLE ──start()──> STARTING ──ready──> RUNNING ──stop()──> STOPPING ──> STOPPED
                          │                   │
                          └── failure / kill ─┴──────────────────────────> STOPPED

``start()`` returns once the server has answered one request (the load is
then running); ``stop()`` returns the ``WebLoadReport``.  Every wait has a
timeout; a failure raises ``ProbeError`` (the web load is a client-side
measurement like the probes) carrying the agent's own message or the tail of
its stderr.  Bad options raise ``ConfigError`` from the constructor, before
anything runs.  The agent is registered with the run's ``Registry`` while it
lives and carries ``--owner RUN_DIR`` on its command line, so ``wanmig clean``
finds and kills it after a crash; it also stops by itself when its stdin
closes.  ``__aexit__`` kills an agent that was not stopped (its report is then
lost: call ``stop()`` to get one).

Typical use, next to the probe::

    async with WebLoad("10.77.0.10", netns="wm1234-c", registry=reg) as web:
        await web.mark("switchover")
        ...
        report = await web.stop()
"""

from __future__ import annotations

import enum
import logging
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from ..children import JsonLinesChild
from ..errors import ProbeError
from ..registry import Registry
from .report import WebLoadReport
from .spec import DEFAULT_PATHS, WebLoadSpec


class WebLoadState(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def web_agent_argv(spec: WebLoadSpec, *, netns: str | None, python: str,
                   ready_timeout: float, owner: str | None = None) -> list[str]:
    """The agent's command line; pure so that unit tests can check it."""
    argv = [python, "-m", "wanmig.workload.agent", *spec.to_args(),
            "--ready-timeout", f"{ready_timeout:g}"]
    if owner:
        argv += ["--owner", owner]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return argv


class WebLoad:
    """Runs the web-load agent against ``target``; use as ``async with``.

    ``rate`` requests/s (default 20) cycle through ``paths`` (default ``/`` three
    times, then ``/blob.bin``), each on a new connection with ``request_timeout``
    seconds (default 2) from connect to last byte.
    """

    def __init__(self, target: str, *, netns: str | None = None, port: int = 80,
                 rate: float = 20.0, paths: Sequence[str] = DEFAULT_PATHS,
                 request_timeout: float = 2.0, max_in_flight: int = 64,
                 python: str = sys.executable, registry: Registry | None = None) -> None:
        self.spec = WebLoadSpec(target=target, port=port, rate_per_s=rate, paths=tuple(paths),
                                request_timeout_s=request_timeout, max_in_flight=max_in_flight)
        self.netns = netns
        self.python = python
        self.registry = registry
        self.state = WebLoadState.IDLE
        self.ready_info: dict[str, Any] = {}
        self.report: WebLoadReport | None = None
        self.log = logging.getLogger(f"wanmig.workload.web.{netns or 'local'}")
        self._agent: JsonLinesChild | None = None

    def __repr__(self) -> str:
        return (f"WebLoad(target={self.spec.target!r}, netns={self.netns!r}, "
                f"rate={self.spec.rate_per_s:g}/s, state={self.state.value}, pid={self.pid})")

    @property
    def pid(self) -> int | None:
        return self._agent.pid if self._agent else None

    # -- lifetime ---------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Spawn the agent and wait until the server has answered once."""
        if self.state is not WebLoadState.IDLE:
            raise ProbeError(f"cannot start a web load in state {self.state.value}")
        self.state = WebLoadState.STARTING
        # the agent gives up a little earlier, so that its own reason arrives in time
        argv = web_agent_argv(self.spec, netns=self.netns, python=self.python,
                              ready_timeout=max(0.5, timeout - 1.0),
                              owner=str(self.registry.run_dir) if self.registry else None)
        self._agent = JsonLinesChild(argv, name="web load agent", error=ProbeError,
                                     registry=self.registry, log=self.log)
        try:
            await self._agent.spawn()
            self.ready_info = await self._agent.next_event("ready", timeout)
        except BaseException:
            await self.kill()
            raise
        self.state = WebLoadState.RUNNING
        self.log.debug("web load ready: %s", self.ready_info)

    async def stop(self, timeout: float = 10.0) -> WebLoadReport:
        """Stop the load and return its report; the process is always reaped."""
        if self.state is WebLoadState.STOPPED and self.report is not None:
            return self.report
        if self.state is not WebLoadState.RUNNING:
            raise ProbeError(f"cannot stop a web load in state {self.state.value}")
        self.state = WebLoadState.STOPPING
        deadline = time.monotonic() + timeout
        try:
            event = await self._command("stop", "report", timeout, stopping=True)
            try:
                self.report = WebLoadReport.from_dict(event)
            except ValueError as exc:
                raise ProbeError(f"unreadable web load report: {exc}", cause=exc) from exc
            return self.report
        finally:
            if self._agent is not None:  # EOF tells the agent to stop
                await self._agent.close(max(1.0, deadline - time.monotonic()))
            self.state = WebLoadState.STOPPED

    async def kill(self) -> None:
        """SIGKILL the agent if it runs, and reap it.  Idempotent."""
        if self._agent is not None:
            await self._agent.kill()
        self.state = WebLoadState.STOPPED

    async def __aenter__(self) -> WebLoad:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.state is not WebLoadState.STOPPED:
            await self.kill()

    # -- commands -----------------------------------------------------------

    async def mark(self, name: str, timeout: float = 5.0) -> float:
        """Record a named instant in the load's clock; ms since the load started."""
        if not name.strip() or "\n" in name:
            raise ProbeError(f"bad mark name {name!r}")
        event = await self._command(f"mark {name.strip()}", "marked", timeout)
        return float(event["t_ms"])

    async def _command(self, line: str, expected: str, timeout: float, *,
                       stopping: bool = False) -> dict[str, Any]:
        if self.state is not (WebLoadState.STOPPING if stopping else WebLoadState.RUNNING):
            raise ProbeError(f"web load is {self.state.value}, cannot {line.split()[0]}")
        assert self._agent is not None
        return await self._agent.command(line, expected, timeout)
