"""``precopy``: the disk before the memory, in passes over a dirty bitmap (Bradford et al.).

B holds the base image, so B's disk is an overlay on it and only what the
guest wrote at A -- A's overlay -- crosses the WAN: the base never does
(libvirt's ``--copy-storage-all`` sends it whole, ``mirror``).  With QEMU's
own block jobs, to B's NBD export::

    block-dirty-bitmap-add  wanmig-precopy on A's disk     every write from now on
    blockdev-backup sync=top                               pass 1: A's overlay as it
                                                           stands (copy-before-write)
    blockdev-backup sync=bitmap bitmap-mode=on-success     pass 2, 3, ...: the blocks
                                                           written meanwhile
    ... until what is dirty fits in ``DELTA_S`` of the link, then the memory
    migration starts; passes go on in the background while it runs, back to
    back whenever more than that is dirty;
    switchover (source paused): the last pass, then B's disk is A's.

When a pass leaves at least as much dirty as it found (the guest rewrites its
disk faster than the link drains it), the guest's writes are throttled
(``block_set_io_throttle bps_wr``), halving from the rate the passes drain
at; the record keeps the throttle and when it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from ..context import RunContext
from ..errors import StorageError, WanmigError
from ..qemu.process import DISK_NODE, QemuVm
from . import nbd
from .jobs import ProgressSteps, budgeted, wait_concluded
from .nbdcopy import NbdCopy, elapsed_ms

BITMAP = "wanmig-precopy"
JOB_ID = "wanmig-precopy-pass"
#: Bitmap granularity: a 4 KiB guest write dirties 64 KiB, QEMU's backup cluster.
GRANULARITY = 64 * 1024
#: The copy has converged when what is dirty crosses in this long at the link's rate.
DELTA_S = 0.05
#: Passes a precopy may take before it throttles the guest regardless.
MAX_PASSES_UNTHROTTLED = 8
#: How often the background passes look at the bitmap while little is dirty.
BACKGROUND_POLL_S = 0.05
PASS_TIMEOUT_S = 600.0


async def bitmap_count(vm: QemuVm, name: str) -> int:
    """The bytes the dirty bitmap ``name`` on the guest's disk has marked."""
    for node in await vm.execute("query-named-block-nodes", {"flat": True}):
        if node.get("node-name") == DISK_NODE:
            for bm in node.get("dirty-bitmaps", []):
                if bm.get("name") == name:
                    return int(bm["count"])
    raise StorageError(f"{vm.name}'s disk has no dirty bitmap {name!r}")


@dataclass(frozen=True)
class Pass:
    """One copy pass: what it moved, what it left dirty."""

    copied: int
    seconds: float
    dirty_after: int


class PrecopyStorage(NbdCopy):
    name: ClassVar[str] = "precopy"
    target_on_base: ClassVar[bool] = True
    note: ClassVar[str] = ("A's overlay over B's base: blockdev-backup sync=top, then "
                           "passes over a dirty bitmap")

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[Pass] = []
        self.throttle_bps: int | None = None
        self.throttled_at: float | None = None
        self._background: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    # -- QEMU -------------------------------------------------------------------

    async def _dirty_bytes(self, ctx: RunContext) -> int:
        assert ctx.src is not None
        return await bitmap_count(ctx.src, BITMAP)

    async def _pass(self, ctx: RunContext, sync: str,
                    progress: ProgressSteps | None = None) -> Pass:
        """One backup job to B: ``top`` (A's overlay) or ``bitmap`` (what was written)."""
        assert ctx.src is not None
        args: dict[str, Any] = {"job-id": JOB_ID, "device": DISK_NODE,
                                "target": nbd.TARGET_NODE, "sync": sync, "auto-dismiss": False}
        if sync == "bitmap":
            args |= {"bitmap": BITMAP, "bitmap-mode": "on-success"}
        t0 = time.monotonic()
        async with budgeted(ctx.budget, ctx.src, JOB_ID) as speed:
            await ctx.src.execute("blockdev-backup", args | {"speed": speed})
            st = await wait_concluded(ctx.src, JOB_ID, PASS_TIMEOUT_S,
                                      what=f"disk pass {sync}", on_progress=progress)
        p = Pass(copied=st.done, seconds=time.monotonic() - t0,
                 dirty_after=await self._dirty_bytes(ctx))
        self.passes.append(p)
        self.copied_bytes = sum(q.copied for q in self.passes)
        return p

    async def _throttle(self, ctx: RunContext, bps: int) -> None:
        assert ctx.src is not None
        await ctx.src.execute("block_set_io_throttle", {
            "device": "disk0", "bps": 0, "bps_rd": 0, "bps_wr": bps,
            "iops": 0, "iops_rd": 0, "iops_wr": 0})

    # -- hooks ------------------------------------------------------------------

    async def copy(self, ctx: RunContext) -> None:
        assert ctx.src is not None
        link_bytes_s = ctx.link.rate_bit_s / 8
        threshold = link_bytes_s * DELTA_S
        facts = self.source_facts
        ctx.ui.step("precopy: copying A's overlay to B (B holds the base)"
                    + (f": {facts.top_bytes / 1e6:.1f} MB written at A of "
                       f"{facts.allocated_bytes / 1e6:.1f} MB allocated" if facts else ""))
        self.started = time.monotonic()
        await ctx.src.execute("block-dirty-bitmap-add", {
            "node": DISK_NODE, "name": BITMAP, "granularity": GRANULARITY})
        p = await self._pass(ctx, "top", ProgressSteps(
            ctx.ui.step, "precopy: bulk pass", moved=lambda: ctx.faults.at("storage-progress")))
        self.ready_at = time.monotonic()
        deadline = self.started + ctx.scenario.storage.timeout_s
        while p.dirty_after > threshold:
            if time.monotonic() > deadline:
                raise StorageError(f"the disk precopy did not converge in "
                                   f"{ctx.scenario.storage.timeout_s:g} s: "
                                   f"{p.dirty_after / 1e6:.1f} MB still dirty")
            p = await self._next_pass(ctx, threshold, limit_passes=True)
            ctx.ui.step(f"precopy: pass {len(self.passes)} copied {p.copied / 1e6:.1f} MB in "
                        f"{p.seconds:.1f} s; {p.dirty_after / 1e6:.2f} MB dirty")
        ctx.ui.step(f"precopy: converged after {len(self.passes)} passes "
                    f"({self.copied_bytes / 1e6:.1f} MB); passes go on during the memory copy")
        self._background = asyncio.create_task(self._keep_up(ctx, threshold))

    async def _next_pass(self, ctx: RunContext, threshold: float, *,
                         limit_passes: bool = False) -> Pass:
        """A bitmap pass.  If it leaves more than ``threshold`` dirty and no less than it
        copied (the guest wrote as fast as the pass drained), or (``limit_passes``) it
        is past ``MAX_PASSES_UNTHROTTLED``, the guest's writes are throttled (further)."""
        p = await self._pass(ctx, "bitmap")
        if p.dirty_after > threshold and (
                p.dirty_after >= p.copied
                or (limit_passes and len(self.passes) > MAX_PASSES_UNTHROTTLED)):
            await self._slow_writes(ctx, p)
        return p

    async def _slow_writes(self, ctx: RunContext, p: Pass) -> None:
        """The guest writes faster than the passes drain: throttle its writes, to half
        the drain rate, then halving."""
        drain = p.copied / p.seconds if p.seconds > 0 else ctx.link.rate_bit_s / 8
        bps = int(max(64 * 1024, (self.throttle_bps or drain) / 2))
        await self._throttle(ctx, bps)
        if self.throttle_bps is None:
            self.throttled_at = time.monotonic()
        self.throttle_bps = bps
        ctx.ui.step(f"precopy: the guest dirties its disk faster than the link drains it: "
                    f"its writes throttled to {bps * 8 / 1e6:.2f} Mbit/s")

    async def _keep_up(self, ctx: RunContext, threshold: float) -> None:
        """During the memory copy: passes back to back while more than ``threshold`` is
        dirty (throttling as before), so the paused last pass stays short."""
        while not self._stop.is_set():
            if await self._dirty_bytes(ctx) > threshold:
                await self._next_pass(ctx, threshold)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=BACKGROUND_POLL_S)

    async def _end_background(self) -> None:
        self._stop.set()
        if self._background is not None:
            task, self._background = self._background, None
            await task   # a pass under way finishes first; its failure is the run's

    async def switchover(self, ctx: RunContext) -> None:
        """The source is paused: the last pass, then B's disk is A's."""
        self._note_io(ctx)
        await self._end_background()
        last = await self._pass(ctx, "bitmap")
        if last.dirty_after:
            raise StorageError(f"the disk was written while the source was paused "
                               f"({last.dirty_after} bytes dirty after the last pass)")
        await self._in_sync(ctx)

    async def rollback(self, ctx: RunContext) -> None:
        assert ctx.src is not None
        with contextlib.suppress(StorageError):
            await self._end_background()
        await self._abandon(ctx, JOB_ID, "the disk pass")
        # the guest stays at A: its writes unthrottled, no longer tracked
        if self.throttle_bps is not None:
            await self._throttle(ctx, 0)
        if self.passes or self.started is not None:
            with contextlib.suppress(WanmigError):   # it may never have been added
                await ctx.src.execute("block-dirty-bitmap-remove",
                                      {"node": DISK_NODE, "name": BITMAP})

    def extra_record(self) -> dict[str, Any]:
        return {"passes": len(self.passes) or None,
                "last_delta_bytes": self.passes[-1].copied if self.ended else None,
                "write_throttle_bps": self.throttle_bps,
                "throttled_after_ms": elapsed_ms(self.started, self.throttled_at)}
