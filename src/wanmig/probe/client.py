"""``ClientProbe``: the orchestrator's handle on one probe agent process.

The agent (``wanmig.probe.agent``) does the timing-sensitive work in its own
process, inside the client's network namespace; this class only says how to
start it (``agent_argv``) and what it is asked (``mark``,
``new_connection_ms``).  Starting, stopping, reaping and the state machine are
``AgentHandle``'s (``wanmig.agent_handle``), shared with ``WebLoad``::

    IDLE ──start()──> STARTING ──ready──> RUNNING ──stop()──> STOPPING ──> STOPPED
                          │                   │
                          └── failure / kill ─┴──────────────────────────> STOPPED

The agent is ready once every probe has succeeded once.  Every wait has a
timeout; a failure raises ``ProbeError`` carrying the agent's own message or
the tail of its stderr.  The agent's UDP thread runs SCHED_FIFO
(``rt_priority``, 0 to disable; silently ordinary when not permitted, see
``ready_info``).  ``__aexit__`` kills an agent that was not stopped (its
report is then lost: call ``stop()`` to get one).

Typical use::

    async with ClientProbe("10.0.0.10", netns="wm-client") as probe:
        await probe.mark("switchover")
        ...
        report = await probe.stop()
"""

from __future__ import annotations

import logging
import sys

from ..agent_handle import AgentHandle
from ..children import ChildState, module_argv
from ..registry import Registry
from .report import ProbeReport, ProbeWindow

ProbeState = ChildState  # the name this package has always exported


def agent_argv(target: str, *, netns: str | None, udp_port: int, tcp_port: int,
               http_port: int, interval_ms: float, python: str, ready_timeout: float,
               rt_priority: int = 10, owner: str | None = None,
               by_name: tuple[str, str] | None = None) -> list[str]:
    """The agent's command line; pure so that unit tests can check it.  ``by_name``:
    (name, DNS server) new HTTP connections resolve the VM by."""
    args = ["--target", target, "--udp-port", str(udp_port), "--tcp-port", str(tcp_port),
            "--http-port", str(http_port), "--interval-ms", f"{interval_ms:g}",
            "--ready-timeout", f"{ready_timeout:g}", "--rt-priority", str(rt_priority)]
    if by_name is not None:
        args += ["--name", by_name[0], "--dns", by_name[1]]
    return module_argv("wanmig.probe.agent", args, python=python, netns=netns, owner=owner)


class ClientProbe(AgentHandle[ProbeReport]):
    """Runs the probe agent against ``target``; use as ``async with``.

    ``start()`` returns once every probe has succeeded once; ``stop()``
    (default timeout 15 s) returns the ``ProbeReport``.
    """

    noun = "probe"
    agent_name = "probe agent"
    report_type = ProbeReport
    stop_timeout = 15.0

    def __init__(self, target: str, *, netns: str | None = None, udp_port: int = 7,
                 tcp_port: int = 7, http_port: int = 80, interval_ms: float = 1.0,
                 python: str = sys.executable, rt_priority: int = 10,
                 registry: Registry | None = None,
                 by_name: tuple[str, str] | None = None) -> None:
        super().__init__(netns=netns, python=python, registry=registry,
                         log=logging.getLogger(f"wanmig.probe.{netns or 'local'}"))
        self.target = target
        self.by_name = by_name
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.http_port = http_port
        self.interval_ms = interval_ms
        self.rt_priority = rt_priority

    def _describe(self) -> str:
        return f"target={self.target!r}, netns={self.netns!r}"

    def _argv(self, *, ready_timeout: float, owner: str | None) -> list[str]:
        return agent_argv(self.target, netns=self.netns, udp_port=self.udp_port,
                          tcp_port=self.tcp_port, http_port=self.http_port,
                          interval_ms=self.interval_ms, python=self.python,
                          ready_timeout=ready_timeout, rt_priority=self.rt_priority,
                          owner=owner, by_name=self.by_name)

    # -- commands -----------------------------------------------------------

    async def mark_window(self, name: str, timeout: float = 5.0) -> ProbeWindow:
        """``mark``, and the window it closes: the largest UDP gap since the previous mark."""
        event = await self._mark(name, timeout)
        try:
            return ProbeWindow.from_event(event)
        except ValueError as exc:
            raise self.error(str(exc), cause=exc) from exc

    async def new_connection_ms(self, timeout: float = 10.0) -> float | None:
        """Open a new TCP connection and GET /; its time in ms, or None if it failed."""
        agent_timeout = max(0.1, min(timeout - 0.5, timeout * 0.9))
        event = await self._command(f"newconn {agent_timeout:g}", "newconn", timeout)
        if not event.get("ok"):
            self.log.info("new connection failed: %s", event.get("error"))
            return None
        return float(event["ms"])
