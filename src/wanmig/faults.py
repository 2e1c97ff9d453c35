"""Faults injected on purpose (``[fault]`` in a scenario), to show that every failure ends safely.

The engine calls ``Faults.at(point)`` at fixed points of a run; a fault whose
setting names that point fires there::

    point             kill_destination     link_down_phase
    storage-progress                       "storage"      (the disk copy has moved bytes)
    memory-progress   "memory"             "memory"       (first bytes of the stream sent)
    pre-switchover    "pre-switchover"                    (source paused, nothing sent yet)
    switchover                             "switchover"   (before the last bytes leave)
    after-resume      "after-resume"                      (B runs, A not yet stopped)
    postcopy          "postcopy"           "postcopy"     (B runs on borrowed pages)
    verify            corrupt_page = "destination"        (B loaded and paused, before
                                                          verify mode compares its RAM)

A link outage drops every frame both ways for ``link_down_s`` seconds, then
the link comes back by itself (a background task; ``close`` ends it early
and brings the link up).  What fired, and when, goes into the record
(``faults``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .errors import NetworkError
from .memory.verify import corrupt_page

if TYPE_CHECKING:
    from .context import RunContext

KILL_POINTS = {"memory": "memory-progress", "pre-switchover": "pre-switchover",
               "after-resume": "after-resume", "postcopy": "postcopy"}
#: How long the guest runs at B on borrowed pages before a ``postcopy`` kill.
POSTCOPY_RUN_S = 0.5
LINK_POINTS = {"storage": "storage-progress", "memory": "memory-progress",
               "switchover": "switchover", "postcopy": "postcopy"}


class Faults:
    """The scenario's faults for one run."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.spec = ctx.scenario.fault
        self.fired: list[dict[str, Any]] = []
        self._outage: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Faults({self.spec.model_dump()}, fired={[f['fault'] for f in self.fired]})"

    def _note(self, fault: str, point: str, **extra: Any) -> None:
        self.fired.append({"fault": fault, "point": point,
                           "at_ms": round((time.monotonic() - self.ctx.state.t0) * 1000, 1),
                           **extra})

    async def at(self, point: str) -> None:
        """Fire what the scenario asks for at ``point``."""
        if point == "verify" and self.spec.corrupt_page == "destination":
            dst = self.ctx.dst
            assert dst is not None and dst.cfg.ram_file is not None
            address = await asyncio.to_thread(corrupt_page, dst.cfg.ram_file,
                                              dst.cfg.ram_mib * 2**20)
            self.ctx.ui.step(f"fault injection: one byte of B's RAM changed (page {address:#x})")
            self._note("corrupt_page", point, address=hex(address))
        if KILL_POINTS.get(self.spec.kill_destination) == point and self.ctx.dst is not None:
            if point == "postcopy":
                await asyncio.sleep(POSTCOPY_RUN_S)  # let B run on borrowed pages a moment
            self.ctx.ui.step(f"fault injection: killing the destination QEMU ({point})")
            self._note("kill_destination", point)
            await self.ctx.dst.kill()
        if LINK_POINTS.get(self.spec.link_down_phase) == point and self._outage is None:
            link = self.ctx.testbed.wan
            if link is None:  # the scenario validation refuses this; never silently skip
                raise NetworkError("link_down needs an emulated WAN link")
            if point == "postcopy":
                await asyncio.sleep(POSTCOPY_RUN_S)  # B runs on borrowed pages a moment
            self.ctx.ui.step(f"fault injection: the WAN link goes down for "
                             f"{self.spec.link_down_s:g} s ({point})")
            await link.down()
            self._note("link_down", point, seconds=self.spec.link_down_s)
            self._outage = asyncio.create_task(self._bring_up_after(self.spec.link_down_s))

    async def _bring_up_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._link_up("after link_down_s")

    async def _link_up(self, why: str) -> None:
        link = self.ctx.testbed.wan
        if link is not None and link.state.value == "down":
            await link.up()
            self._note("link_up", why)

    async def close(self) -> None:
        """End an outage (teardown): the timer is stopped and the link is up again.

        A timer that failed to bring the link up is retried here, so its error
        (a NetworkError) is the one teardown reports.
        """
        if self._outage is None:
            return
        self._outage.cancel()
        await asyncio.gather(self._outage, return_exceptions=True)
        await self._link_up("teardown")
