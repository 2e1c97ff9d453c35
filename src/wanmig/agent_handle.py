"""``AgentHandle``: the orchestrator's handle on one measuring agent process.

Some measurements run in an agent process of their own, inside the client's
network namespace: the client probes (``wanmig.probe.agent``, handled by
``ClientProbe``) and the web load (``wanmig.workload.agent``, handled by
``WebLoad``).  The agents differ in what they measure, not in their life:
that is ``JsonLinesChild``'s (children.py), shared with the WAN forwarder
and the measurement endpoints.  This class adds what agents have in common
on top of it: the ``stop`` command answered by a report, rebuilt into the
agent's report class, and the ``mark`` command.  A subclass only says

* ``_argv()``        the agent's command line (its own options, put together
                     with ``module_argv()``),
* ``noun``           what the user reads in error messages ("probe", "web load"),
* ``agent_name``     the child's name in ``JsonLinesChild``'s messages,
* ``report_type``    the report class, rebuilt with ``from_dict()``,
* ``stop_timeout``   ``stop()``'s default timeout,
* ``error``          the error type raised (``ProbeError`` for both),

and adds its own commands on top of ``_command()``.  The state, shown by
``__repr__``, is the child's (``ChildState``)::

    IDLE ──start()──> STARTING ──ready──> RUNNING ──stop()──> STOPPING ──> STOPPED
                          │                   │
                          └── failure / kill ─┴──────────────────────────> STOPPED

Every wait has a timeout; a failure (agent not ready, agent died, no answer,
unreadable report) raises ``error`` carrying the agent's own message or the
tail of its stderr.  The agent is registered with the run's ``Registry`` while
it lives and carries ``--owner RUN_DIR`` on its command line, so ``wanmig
clean`` finds it after a crash; it runs in its own session, so a Ctrl-C aimed
at the orchestrator does not kill it before its report is read; and it stops
by itself when its stdin closes.  ``__aexit__`` kills an agent that was not
stopped (its report is then lost: call ``stop()`` to get one).
"""

from __future__ import annotations

import abc
import logging
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from .children import ChildState, JsonLinesChild, owner_of
from .errors import ProbeError, WanmigError
from .registry import Registry


class AgentReport(Protocol):
    """What an agent's report class offers: rebuilding from the report event."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self: ...


ReportT = TypeVar("ReportT", bound=AgentReport)


class AgentHandle(abc.ABC, Generic[ReportT]):
    """One agent process with an explicit state; use as ``async with``."""

    noun: ClassVar[str]
    agent_name: ClassVar[str]
    stop_timeout: ClassVar[float]
    error: ClassVar[type[WanmigError]] = ProbeError
    report_type: type[ReportT]  # a class attribute of each subclass

    def __init__(self, *, netns: str | None, python: str, registry: Registry | None,
                 log: logging.Logger) -> None:
        self.netns = netns
        self.python = python
        self.registry = registry
        self.report: ReportT | None = None
        self.log = log
        self._agent: JsonLinesChild | None = None  # made by start(): its argv needs the timeout

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self._describe()}, state={self.state.value}, "
                f"pid={self.pid})")

    @property
    def state(self) -> ChildState:
        return self._agent.state if self._agent else ChildState.IDLE

    @property
    def pid(self) -> int | None:
        return self._agent.pid if self._agent else None

    @property
    def ready_info(self) -> dict[str, Any]:
        """What the agent said when it was ready."""
        return self._agent.ready_info if self._agent else {}

    @abc.abstractmethod
    def _argv(self, *, ready_timeout: float, owner: str | None) -> list[str]:
        """The agent's command line: ready within ``ready_timeout`` s, run ``owner``."""

    @abc.abstractmethod
    def _describe(self) -> str:
        """What ``__repr__`` shows before the state: ``target=..., netns=...``."""

    # -- lifetime ---------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Spawn the agent and wait for its ``ready`` event; killed if that fails."""
        if self._agent is not None:
            raise self.error(f"cannot start a {self.noun} in state {self.state.value}")
        # the agent gives up a little earlier, so that its own reason arrives in time
        argv = self._argv(ready_timeout=max(0.5, timeout - 1.0), owner=owner_of(self.registry))
        self._agent = JsonLinesChild(argv, name=self.agent_name, error=self.error,
                                     registry=self.registry, log=self.log)
        await self._agent.start(timeout)

    async def stop(self, timeout: float | None = None) -> ReportT:
        """Stop the agent and return its report; the process is always reaped.

        ``timeout`` defaults to the class's ``stop_timeout``.  Once stopped,
        the same report is returned again.
        """
        if self.report is not None:
            return self.report
        if self._agent is None or self.state is not ChildState.RUNNING:
            raise self.error(f"cannot stop a {self.noun} in state {self.state.value}")
        event = await self._agent.finish(
            "report", self.stop_timeout if timeout is None else timeout)
        try:
            self.report = self.report_type.from_dict(event)
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise self.error(f"unreadable {self.noun} report: {exc}", cause=exc) from exc
        return self.report

    async def kill(self) -> None:
        """SIGKILL the agent if it runs, and reap it.  Idempotent."""
        if self._agent is not None:
            await self._agent.kill()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.kill()

    # -- commands -----------------------------------------------------------

    async def mark(self, name: str, timeout: float = 5.0) -> float:
        """Record a named instant in the agent's clock; returns it (ms since agent start)."""
        return float((await self._mark(name, timeout))["t_ms"])

    async def _mark(self, name: str, timeout: float) -> dict[str, Any]:
        """``mark``'s whole answer: an agent may say more than the instant."""
        if not name.strip() or "\n" in name:
            raise self.error(f"bad mark name {name!r}")
        return await self._command(f"mark {name.strip()}", "marked", timeout)

    async def _command(self, line: str, expected: str, timeout: float) -> dict[str, Any]:
        """Send one command and await its answer; one command at a time."""
        if self._agent is None or self.state is not ChildState.RUNNING:
            raise self.error(f"{self.noun} is {self.state.value}, cannot {line.split()[0]}")
        return await self._agent.command(line, expected, timeout)
