"""Faults injected on purpose (``[fault]`` in a scenario), to show that every failure ends safely.

The engine calls ``Faults.at(point)`` at fixed points of a run; a fault whose
setting names that point fires there::

    point             kill_destination  kill_source, kill_controller,  link_down_phase
                                        hang_phase
    storage-progress                                                "storage"
    memory-progress   "memory"          "memory"                    "memory"
    pre-switchover    "pre-switchover"  "pre-switchover"
    switchover                          "switchover"                "switchover"
    after-resume      "after-resume"    "after-resume"
    postcopy          "postcopy"        "postcopy"                  "postcopy"
    verify            corrupt_page = "destination"

``storage-progress``: the disk copy has moved bytes; ``memory-progress``: the
first bytes of the memory stream are sent; ``pre-switchover``: the source is
paused, nothing of the last round sent; ``switchover``: before the last bytes
leave; ``after-resume``: B runs, A not yet stopped; ``postcopy``: B runs on
borrowed pages; ``verify``: B loaded and paused, before verify mode compares
its RAM.

A hang (``hang`` = which QEMU, ``hang_phase``, ``hang_s``) is SIGSTOP to that
QEMU, and SIGCONT ``hang_s`` later (a background task; ``close`` ends it early):
the engine sees only a QEMU that does not answer.
A link outage drops every frame both ways for ``link_down_s`` seconds, then
the link comes back by itself (a background task; ``close`` ends it early
and brings the link up).  What fired, and when, goes into the record
(``faults``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from .errors import NetworkError
from .memory.verify import corrupt_page

if TYPE_CHECKING:
    from .context import RunContext
    from .qemu.process import QemuVm

#: A fault's phase (its setting's value) -> the point it fires at.
POINTS = {"storage": "storage-progress", "memory": "memory-progress",
          "pre-switchover": "pre-switchover", "switchover": "switchover",
          "after-resume": "after-resume", "postcopy": "postcopy"}
#: How long the guest runs at B on borrowed pages before a ``postcopy`` fault.
POSTCOPY_RUN_S = 0.5


class Faults:
    """The scenario's faults for one run."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.spec = ctx.scenario.fault
        self.fired: list[dict[str, Any]] = []
        self._outage: asyncio.Task[None] | None = None
        self._hang: asyncio.Task[None] | None = None
        self._closing = False

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
        if point == "postcopy" and self._fires_here(point):
            await asyncio.sleep(POSTCOPY_RUN_S)  # let B run on borrowed pages a moment
        for qemu, phase in (("destination", self.spec.kill_destination),
                            ("source", self.spec.kill_source)):
            vm = self.ctx.dst if qemu == "destination" else self.ctx.src
            if POINTS.get(phase) == point and vm is not None:
                self.ctx.ui.step(f"fault injection: killing the {qemu} QEMU ({point})")
                self._note(f"kill_{qemu}", point)
                await vm.kill()
        if POINTS.get(self.spec.kill_controller) == point:
            self.ctx.ui.step(f"fault injection: the controller kills itself ({point}); "
                             f"end the run with: wanmig recover {self.ctx.registry.run_id}")
            os.kill(os.getpid(), signal.SIGKILL)
        if POINTS.get(self.spec.hang_phase) == point and self._hang is None:
            await self._hang_qemu(point)
        if POINTS.get(self.spec.link_down_phase) == point and self._outage is None:
            link = self.ctx.testbed.wan
            if link is None:  # the scenario validation refuses this; never silently skip
                raise NetworkError("link_down needs an emulated WAN link")
            self.ctx.ui.step(f"fault injection: the WAN link goes down for "
                             f"{self.spec.link_down_s:g} s ({point})")
            await link.down()
            self._note("link_down", point, seconds=self.spec.link_down_s)
            self._outage = asyncio.create_task(self._bring_up_after(self.spec.link_down_s))

    def _fires_here(self, point: str) -> bool:
        spec = self.spec
        return point in {POINTS.get(p) for p in (spec.kill_destination, spec.kill_source,
                                                  spec.kill_controller, spec.hang_phase,
                                                  spec.link_down_phase)}

    async def _hang_qemu(self, point: str) -> None:
        vm = self.ctx.src if self.spec.hang == "source" else self.ctx.dst
        if vm is None or vm.pid is None or vm.returncode is not None:
            return
        pid, seconds = vm.pid, self.spec.hang_s
        self.ctx.ui.step(f"fault injection: the {self.spec.hang} QEMU stops answering for "
                         f"{seconds:g} s ({point}, SIGSTOP)")
        os.kill(pid, signal.SIGSTOP)
        self._note("hang", point, qemu=self.spec.hang, seconds=seconds)
        self._hang = asyncio.create_task(self._continue_after(vm, seconds))

    async def _continue_after(self, vm: QemuVm, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        finally:   # also when cancelled at teardown: a stopped QEMU is never left behind
            if vm.pid is not None and vm.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(vm.pid, signal.SIGCONT)
                self._note("hang_end", "after hang_s" if not self._closing else "teardown",
                           qemu=self.spec.hang)

    async def _bring_up_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._link_up("after link_down_s")

    async def _link_up(self, why: str) -> None:
        link = self.ctx.testbed.wan
        if link is not None and link.state.value == "down":
            await link.up()
            self._note("link_up", why)

    async def close(self) -> None:
        """End an outage or a hang (teardown): the timers are stopped, the link is up
        again and a stopped QEMU goes on.

        A timer that failed to bring the link up is retried here, so its error
        (a NetworkError) is the one teardown reports.
        """
        self._closing = True
        for task in (self._hang, self._outage):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._outage is not None:
            await self._link_up("teardown")
