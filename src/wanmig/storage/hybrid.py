"""``hybrid``: what the guest wrote so far crosses in bulk while it runs at A; what it
writes after that is fetched by B on demand and streamed once B runs.

Precopy's passes chase a guest that keeps writing (and throttle it when the
link cannot keep up); postcopy makes B read everything A's guest ever wrote
over the WAN after B runs.  Hybrid freezes what A's guest wrote up to the
copy's start and moves it the cheap way -- once, while the guest runs, with
no dirty tracking -- and leaves only the later writes to postcopy's
machinery, so it never throttles the guest and B depends on A only for
those::

    A, at the copy's start:  blockdev-snapshot: a new overlay, A's *delta*, over
                             A's disk (disk0-format, frozen from now on); the
                             guest writes into the delta
                             blockdev-backup sync=top of the frozen overlay to
                             B's NBD export (the push channel; the base stays)
    switchover, B paused:    blockdev-snapshot: B's *top* (empty) over B's disk,
                             then A's delta (read over the pull channel) put
                             between them:

    B: wanmig-b-top -> wanmig-a-overlay (A's delta over NBD) -> disk0-format
       (B's overlay: the bulk) -> disk0-base

    after B runs:            block-stream base-node=disk0-format copies the
                             delta into B's top; B no longer needs A.

The layering is postcopy's (``PostcopyStorage``): the same pull channel, the
same sparse extension of the file B reads (here A's delta), the same cost of
opening a qcow2 over the WAN while B waits.  Verify mode cannot compare the
disks before B runs (B reads A's delta over the WAN); the record says so, and
e2fsck and the guest's log remain.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from ..context import RunContext
from ..memory.plan import TlsSettings
from ..qemu.process import DISK_NODE
from . import nbd
from .disk import create_overlay
from .jobs import ProgressSteps, budgeted, wait_concluded
from .nbdcopy import PULL_FILE_NODE, PULL_OVERLAY_NODE
from .postcopy import PostcopyStorage, Step

BULK_JOB_ID = "wanmig-bulk"
DELTA_NODE = "wanmig-delta"            # at A: the overlay the guest writes after the snapshot
DELTA_FILE_NODE = "wanmig-delta-file"
TOP_NODE = "wanmig-b-top"              # at B: the overlay B's guest runs on
TOP_FILE_NODE = "wanmig-b-top-file"


def _qcow2_node(node: str, file_node: str, path: Path) -> dict[str, Any]:
    """A writable qcow2 node on ``path`` with no backing yet (``blockdev-snapshot`` gives
    it one), opened like the guest's disk (``cache=none``, threads)."""
    return {"driver": "qcow2", "node-name": node, "backing": None,
            "file": {"driver": "file", "node-name": file_node,
                     "filename": str(path.absolute()), "cache": {"direct": True},
                     "aio": "threads"}}


class HybridStorage(PostcopyStorage):
    name: ClassVar[str] = "hybrid"
    note: ClassVar[str] = ("A's writes so far in bulk while it runs (blockdev-backup of its "
                           "frozen overlay), the rest read by B over NBD, then block-stream")
    stream_top: ClassVar[str] = TOP_NODE
    stream_base: ClassVar[str] = DISK_NODE

    def __init__(self) -> None:
        super().__init__()
        self.push_tls: TlsSettings | None = None
        self.bulk_bytes: int | None = None
        self._bulk_wire = 0

    @property
    def delta(self) -> Path:
        """A's delta: the overlay A's guest writes into once the bulk copy began."""
        assert self.disks is not None, "create() first"
        return self.disks.source.with_name("delta.qcow2")

    @property
    def top(self) -> Path:
        """B's top: the overlay B's guest runs on, over A's delta until the stream ends."""
        assert self.disks is not None, "create() first"
        return self.disks.target.with_name("top.qcow2")

    @property
    def pulled(self) -> Path:
        return self.delta

    @property
    def log_disk(self) -> Path | None:
        """B's top once B ran; A's delta otherwise (an empty delta reads as A's disk)."""
        if self.disks is None:
            return None
        return self.top if self.resumed is not None else self.delta

    async def _make_images(self) -> None:
        """A's delta over A's disk and B's top over B's: their headers name the chains
        offline tools read; QEMU puts them in place at run time."""
        assert self.disks is not None
        await create_overlay(self.delta, self.disks.source)
        await create_overlay(self.top, self.disks.target)

    async def _open_channel(self, ctx: RunContext) -> None:
        """Both channels: B reads A's delta (pull), A writes the bulk to B (push; with
        wancopy the bulk has its own connections, made when it starts)."""
        await super()._open_channel(ctx)
        if not ctx.scenario.storage.wancopy_for(self.name):
            self.push_tls = await self._channel_tls(ctx, "b")
            await self._open_push(ctx, self.push_tls)

    async def copy(self, ctx: RunContext) -> None:
        """Freeze A's disk under a delta, send it in bulk, close the push channel."""
        assert ctx.src is not None
        self.started = time.monotonic()
        await ctx.src.execute("blockdev-add", _qcow2_node(DELTA_NODE, DELTA_FILE_NODE,
                                                          self.delta))
        await ctx.src.execute("blockdev-snapshot", {"node": DISK_NODE, "overlay": DELTA_NODE})
        facts = self.source_facts
        ctx.ui.step("hybrid: A's disk frozen under a new overlay; copying what the guest "
                    "wrote so far to B" + (f" ({facts.top_bytes / 1e6:.1f} MB; B holds the "
                                           "base)" if facts else ""))
        if ctx.scenario.storage.wancopy_for(self.name):
            done = await self._bulk_wancopy(ctx)
        else:
            done = await self._bulk_backup(ctx)
        self.ready_at = time.monotonic()
        self.bulk_bytes = self.copied_bytes = done
        ctx.ui.step(f"hybrid: bulk copied {done / 1e6:.1f} MB in "
                    f"{self.ready_at - self.started:.1f} s; what the guest writes from now "
                    "on B reads from A after the switchover")
        await self._prestart_fetch(ctx)

    async def _bulk_backup(self, ctx: RunContext) -> int:
        """The frozen overlay to B's NBD export (``blockdev-backup sync=top``), then the
        push channel closed; the bytes copied."""
        assert ctx.src is not None
        async with budgeted(ctx.budget, ctx.src, BULK_JOB_ID) as speed:
            await ctx.src.execute("blockdev-backup", {
                "job-id": BULK_JOB_ID, "device": DISK_NODE, "target": nbd.TARGET_NODE,
                "sync": "top", "auto-dismiss": False, "speed": speed})
            st = await wait_concluded(
                ctx.src, BULK_JOB_ID, ctx.scenario.storage.timeout_s, what="the bulk copy",
                on_progress=ProgressSteps(ctx.ui.step, "hybrid: bulk",
                                          moved=lambda: ctx.faults.at("storage-progress")))
        self._bulk_wire = await self._wire(ctx, "b")
        await self._close_push(ctx)
        return st.done

    async def _bulk_wancopy(self, ctx: RunContext) -> int:
        """The frozen overlay's own blocks into B's disk file with wanmig's transport:
        B's QEMU holds that file inactive (nothing exported it), and re-reads it when
        it is activated before B runs, as after a migration on shared storage."""
        assert self.disks is not None
        copy = self._new_copy(ctx, source=self.disks.source, target=self.disks.target,
                              label="bulk", same_offset=True)
        await copy.start()
        await self._run_copy(ctx, copy)
        self._bulk_wire = copy.wire_bytes or 0
        return int(copy.result.get("total_bytes", 0))

    def _top_options(self, backing: str) -> dict[str, Any]:
        return {**_qcow2_node(TOP_NODE, TOP_FILE_NODE, self.top), "file": TOP_FILE_NODE,
                "backing": backing}

    def _layer_steps(self) -> list[Step]:
        """B's top over B's disk (the bulk), then A's delta slid in between."""
        return [
            ("open_top", "blockdev-add", _qcow2_node(TOP_NODE, TOP_FILE_NODE, self.top)),
            ("snapshot", "blockdev-snapshot", {"node": DISK_NODE, "overlay": TOP_NODE}),
            ("open_overlay", "blockdev-add", {
                "driver": "qcow2", "node-name": PULL_OVERLAY_NODE,
                "file": PULL_FILE_NODE, "backing": DISK_NODE, "read-only": True}),
            ("reopen_top", "blockdev-reopen", {"options": [self._top_options(
                PULL_OVERLAY_NODE)]}),
        ]

    async def _count_wire(self, ctx: RunContext) -> None:
        """The bulk (counted when its channel closed), what B read from A and the fetch."""
        await super()._count_wire(ctx)
        self.wire_bytes = (self.wire_bytes or 0) + self._bulk_wire

    async def rollback(self, ctx: RunContext) -> None:
        self._layered = False
        await self._drop_fetch()
        await self._abandon(ctx, BULK_JOB_ID, "the bulk copy")
        await self._close_push(ctx)

    def extra_record(self) -> dict[str, Any]:
        return {**super().extra_record(), "bulk_bytes": self.bulk_bytes}
