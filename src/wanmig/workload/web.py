"""``WebLoad``: the orchestrator's handle on one web-load agent process.

The agent (``wanmig.workload.agent``) runs inside the client's network
namespace and sends HTTP requests to the guest's web server at a steady rate;
this class only says how to start it (``web_agent_argv`` of a
``WebLoadSpec``).  Starting, stopping, reaping and the state machine are
``AgentHandle``'s (``wanmig.agent_handle``), shared with the probe's
``ClientProbe``::

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

import logging
import sys
from collections.abc import Sequence

from ..agent_handle import AgentHandle
from ..children import ChildState, module_argv
from ..registry import Registry
from .report import WebLoadReport
from .spec import DEFAULT_PATHS, WebLoadSpec

WebLoadState = ChildState  # the name this package has always exported


def web_agent_argv(spec: WebLoadSpec, *, netns: str | None, python: str,
                   ready_timeout: float, owner: str | None = None) -> list[str]:
    """The agent's command line; pure so that unit tests can check it."""
    args = [*spec.to_args(), "--ready-timeout", f"{ready_timeout:g}"]
    return module_argv("wanmig.workload.agent", args, python=python, netns=netns, owner=owner)


class WebLoad(AgentHandle[WebLoadReport]):
    """Runs the web-load agent against ``target``; use as ``async with``.

    ``rate`` requests/s (default 20) cycle through ``paths`` (default ``/`` three
    times, then ``/blob.bin``), each on a new connection with ``request_timeout``
    seconds (default 2) from connect to last byte.  ``stop()`` has a default
    timeout of 10 s.
    """

    noun = "web load"
    agent_name = "web load agent"
    report_type = WebLoadReport
    stop_timeout = 10.0

    def __init__(self, target: str, *, netns: str | None = None, port: int = 80,
                 rate: float = 20.0, paths: Sequence[str] = DEFAULT_PATHS,
                 request_timeout: float = 2.0, max_in_flight: int = 64,
                 python: str = sys.executable, registry: Registry | None = None) -> None:
        self.spec = WebLoadSpec(target=target, port=port, rate_per_s=rate, paths=tuple(paths),
                                request_timeout_s=request_timeout, max_in_flight=max_in_flight)
        super().__init__(netns=netns, python=python, registry=registry,
                         log=logging.getLogger(f"wanmig.workload.web.{netns or 'local'}"))

    def _describe(self) -> str:
        return (f"target={self.spec.target!r}, netns={self.netns!r}, "
                f"rate={self.spec.rate_per_s:g}/s")

    def _argv(self, *, ready_timeout: float, owner: str | None) -> list[str]:
        return web_agent_argv(self.spec, netns=self.netns, python=self.python,
                              ready_timeout=ready_timeout, owner=owner)
