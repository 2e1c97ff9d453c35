"""``auto``: measure the guest's disk and the link, predict every strategy, run the best.

The disks are made before the source boots, before anything can be
measured, so ``auto`` makes what every candidate needs (``hybrid``'s layout:
A's overlay and delta, B's overlay and top; A's overlay extended sparse for
``postcopy``), measures once A runs and chooses from:

* the guest's disk dirty rate: a dirty bitmap on A's disk for
  ``storage.survey_s`` at the copy's granularity (new 64 KiB blocks/s);
* what A's overlay holds and what its chain has allocated (``qemu-img map``);
* the link's drain rate (one TCP stream's goodput as measured before the
  move, else a share of its rate) and RTT;
* the memory copy's time: the memory part's own prediction where it made
  one (the surveyed strategies, at their ``prepare``), else the guest's RAM
  at the drain rate, an upper bound (zero pages and zstd make the real copy
  shorter, and a ``hybrid`` or ``postcopy`` delta smaller than predicted).

The disk is surveyed at ``prepare``; the choice waits for the copy, after
every part prepared, so the memory part's prediction is known.
``model.storage.choose_storage`` decides (pure); the chosen part adopts the
disks, opens its channels (``prepare``: TLS, NBD, the room at B) and runs
every hook from then on.  The record's storage block is the
chosen part's, with ``strategy: auto``, ``chosen``, the survey, every
prediction and the reason -- as memory's ``auto`` records its choice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

from ..context import RunContext, StoragePart
from ..model.storage import DRAIN_SHARE, DiskMeasurements, StorageDecision, choose_storage
from ..parts import STORAGE
from ..qemu.process import DISK_NODE
from .disk import DiskFacts, disk_facts
from .hybrid import HybridStorage
from .nbdcopy import NbdCopy
from .postcopy import extend_sparse
from .precopy import GRANULARITY, bitmap_count

SURVEY_BITMAP = "wanmig-survey"


async def disk_dirty_rate(ctx: RunContext, seconds: float) -> float:
    """New dirty bytes per second on A's disk over ``seconds`` (a dirty bitmap at the
    copies' granularity: a block rewritten twice counts once, as a pass sends it)."""
    assert ctx.src is not None
    await ctx.src.execute("block-dirty-bitmap-add", {
        "node": DISK_NODE, "name": SURVEY_BITMAP, "granularity": GRANULARITY})
    try:
        await asyncio.sleep(seconds)
        count = await bitmap_count(ctx.src, SURVEY_BITMAP)
    finally:
        await ctx.src.execute("block-dirty-bitmap-remove",
                              {"node": DISK_NODE, "name": SURVEY_BITMAP})
    return count / seconds


class AutoStorage(StoragePart):
    """Survey, predict, choose; then the chosen strategy does everything."""

    name: ClassVar[str] = "auto"

    def __init__(self) -> None:
        self.layout = HybridStorage()       # makes every candidate's images
        self.chosen: NbdCopy | None = None
        self.decision: StorageDecision | None = None
        self._dirty_bytes_s: float | None = None
        self._facts: DiskFacts | None = None
        self._memory_from: str | None = None

    def __repr__(self) -> str:
        return f"AutoStorage(chosen={self.chosen!r})"

    @property
    def part(self) -> NbdCopy:
        """The chosen part, or the layout's before the choice."""
        return self.chosen or self.layout

    async def create(self, ctx: RunContext) -> None:
        await self.layout.create(ctx)
        assert self.layout.disks is not None
        await extend_sparse(self.layout.disks.source, ctx.scenario.vm.disk_mib)

    def disk_for(self, site: str) -> Path:
        return self.layout.disk_for(site)

    @property
    def log_disk(self) -> Path | None:
        return self.part.log_disk

    async def prepare(self, ctx: RunContext) -> None:
        """The guest's disk writes and what its disk holds."""
        disks = self.layout.disks
        assert disks is not None
        spec = ctx.scenario.storage
        ctx.ui.step(f"auto: measuring the guest's disk writes for {spec.survey_s:g} s")
        self._dirty_bytes_s = await disk_dirty_rate(ctx, spec.survey_s)
        self._facts = await disk_facts(disks.source)

    def measurements(self, ctx: RunContext) -> tuple[DiskMeasurements, str]:
        """The model's inputs, and where the memory copy's time came from."""
        assert self._facts is not None and self._dirty_bytes_s is not None
        link = ctx.link
        drain = (link.goodput_bit_s or link.rate_bit_s * DRAIN_SHARE) / 8
        memory_s, memory_from = ctx.memory_predicted_s, "the memory part's prediction"
        if memory_s is None:
            memory_s = ctx.scenario.vm.ram_mib * 2**20 / drain
            memory_from = "the guest's RAM at the drain rate (an upper bound)"
        return DiskMeasurements(
            overlay_bytes=self._facts.top_bytes, allocated_bytes=self._facts.allocated_bytes,
            dirty_bytes_s=self._dirty_bytes_s, drain_bytes_s=drain, rtt_ms=link.rtt_ms,
            storage_share=ctx.scenario.budget.storage_share,
            memory_s=memory_s), memory_from

    async def copy(self, ctx: RunContext) -> None:
        """Choose, then the chosen part prepares and copies."""
        assert self.layout.disks is not None
        measured, self._memory_from = self.measurements(ctx)
        self.decision = choose_storage(measured, ctx.scenario.storage.dest_running_within_s)
        ctx.ui.step(f"auto chose {self.decision.reason}")
        chosen: NbdCopy = STORAGE.create(self.decision.chosen)
        chosen.adopt(ctx, self.layout.disks)
        self.chosen = chosen
        await chosen.prepare(ctx)
        await chosen.copy(ctx)

    async def switchover(self, ctx: RunContext) -> None:
        await self.part.switchover(ctx)

    async def before_run(self, ctx: RunContext) -> None:
        await self.part.before_run(ctx)

    async def redirect(self, ctx: RunContext) -> None:
        await self.part.redirect(ctx)

    async def finish(self, ctx: RunContext) -> None:
        await self.part.finish(ctx)

    async def rollback(self, ctx: RunContext) -> None:
        if self.chosen is not None:     # before the choice nothing was opened or copied
            await self.chosen.rollback(ctx)

    async def check(self) -> None:
        await self.part.check()

    def instants(self) -> dict[str, float]:
        return self.part.instants()

    def integrity(self) -> dict[str, Any]:
        return self.part.integrity()

    def record(self) -> dict[str, Any]:
        out = self.chosen.record() if self.chosen is not None else {}
        out["strategy"] = self.name
        if self.decision is not None:
            out |= {"chosen": self.decision.chosen, "reason": self.decision.reason,
                    "measurements": {**self.decision.measurements.model_dump(),
                                     "memory_s_from": self._memory_from},
                    "predictions": [p.model_dump() for p in self.decision.predictions],
                    "predicted": self.decision.prediction().model_dump()}
        return out
