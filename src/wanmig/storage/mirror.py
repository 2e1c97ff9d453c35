"""``mirror``: libvirt's ``--copy-storage-all``, the baseline every storage bench shows.

What libvirt does for a migration with non-shared storage, with its defaults
(no bandwidth limit, QEMU's default granularity and buffer, background copy
mode), step for step:

1. B's disk is a fresh image of the same size; B's QEMU serves it over NBD
   (``nbd.serve_disk``) and A's QEMU opens it (``nbd.attach_target``).
2. ``blockdev-mirror sync=full`` copies the guest-visible disk -- base
   included -- while the guest runs, then stays ``ready``, copying each new
   write as it happens; only then does the memory migration start.
3. With the source paused (pre-switchover), ``block-job-cancel`` ends the
   ready mirror without pivoting: the target is a synchronised copy.  The NBD
   connection closes and B stops serving; then memory completes and B runs.

Its known costs, which the other strategies exist to beat: every allocated
block crosses the WAN whatever B already holds (the base too), nothing is
compressed, and the guest's writes during the copy cross again.
"""

from __future__ import annotations

import time
from typing import ClassVar

from ..context import RunContext
from ..qemu.process import DISK_NODE
from . import nbd
from .jobs import ProgressSteps, start_budgeted, wait_concluded, wait_ready
from .nbdcopy import NbdCopy

JOB_ID = "wanmig-mirror"
#: A ready mirror with the guest paused has only in-flight writes left.
CANCEL_TIMEOUT_S = 60.0


class MirrorStorage(NbdCopy):
    name: ClassVar[str] = "mirror"
    note: ClassVar[str] = ("libvirt --copy-storage-all: blockdev-mirror sync=full to B's "
                           "NBD export")

    async def copy(self, ctx: RunContext) -> None:
        assert ctx.src is not None
        facts = self.source_facts
        ctx.ui.step("mirror: copying the disk to B over NBD"
                    + (f" ({facts.allocated_bytes / 1e6:.1f} MB allocated of "
                       f"{facts.virtual_bytes / 1e6:.0f} MB)" if facts else ""))
        self.started = time.monotonic()
        spec = ctx.scenario.storage
        # the mirror copies until the switchover: the disk's share of the budget until then
        speed = await start_budgeted(ctx.budget, ctx.src, JOB_ID)
        await ctx.src.execute("blockdev-mirror", {
            "job-id": JOB_ID, "device": DISK_NODE, "target": nbd.TARGET_NODE,
            "sync": "full", "auto-dismiss": False, "speed": speed,
            "copy-mode": "write-blocking" if spec.synchronous_writes else "background"})
        await wait_ready(ctx.src, JOB_ID, spec.timeout_s, what="the disk mirror",
                         on_progress=ProgressSteps(ctx.ui.step, "mirror",
                                                   moved=lambda: ctx.faults.at("storage-progress")))
        self.ready_at = time.monotonic()
        ctx.ui.step(f"mirror: ready after {self.ready_at - self.started:.1f} s; it copies the "
                    f"guest's writes as they happen until the switchover")

    async def switchover(self, ctx: RunContext) -> None:
        """The source is paused: end the mirror in sync, close the NBD channel."""
        assert ctx.src is not None and ctx.dst is not None
        self._note_io(ctx)
        await ctx.src.execute("block-job-cancel", {"device": JOB_ID})
        st = await wait_concluded(ctx.src, JOB_ID, CANCEL_TIMEOUT_S, what="the disk mirror")
        await ctx.budget.stop("storage")
        self.copied_bytes = st.done
        await self._in_sync(ctx)

    async def rollback(self, ctx: RunContext) -> None:
        await ctx.budget.stop("storage")
        await self._abandon(ctx, JOB_ID, "the disk mirror")
