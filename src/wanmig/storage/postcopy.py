"""``postcopy``: memory first; B runs at once, its disk's missing blocks fetched from A
(Hirofuchi et al.'s xNBD, with QEMU's own block layer in the proxy's place).

Nothing of the disk crosses before the switchover.  B's disk is an overlay
on B's own base.  At A, a second, read-only node on A's overlay *file* (made
larger up front, sparse, so that it never grows past what B connected to: see
``extend_sparse``; the qcow2 container itself, ``locking=off``, O_DIRECT) is exported over NBD from
the start, and B opens it as a protocol node then, so the TLS handshake is
not in the outage.  Once memory has completed (A's disk flushed and
inactive) and before B runs, B layers a qcow2 driver over that NBD node with
B's *own* base as its backing and puts it under its disk::

    B: disk0-format (B's overlay, empty) -> wanmig-a-overlay (A's overlay file,
       read over NBD) -> disk0-base (B's local base)

so a block the guest reads that A's overlay holds comes from A over the WAN,
one the base holds is read locally: the base never crosses.  After B runs,
``block-stream base-node=disk0-base`` copies A's overlay into B's, and the
chain is B's overlay on B's base again; the NBD node and A's export go.

The cost: opening the qcow2 layer reads its header and tables over the WAN
while B waits (a few round trips); a guest read of a block not streamed yet
crosses the WAN each time (the stream's copy-on-read fills B's overlay, the
guest's reads do not); until the stream ends, B depends on A -- if A dies
then, the guest's reads fail.  Verify mode cannot compare the disks before B
runs (B's disk *is* A's then, through the WAN); the record says so, and the
filesystem check and the guest's log remain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from ..context import RunContext
from ..errors import StorageError, WanmigError
from ..qemu.process import DISK_BASE_NODE, DISK_FILE_NODE, DISK_NODE
from .disk import LocalDisks, create_overlay, disk_facts
from .jobs import ProgressSteps, budgeted, wait_concluded
from ..testbed.topology import WAN_IFACE
from ..testbed.netns import tx_bytes
from .nbdcopy import PULL_EXPORT, PULL_FILE_NODE, PULL_OVERLAY_NODE, PULL_SOURCE_NODE, NbdCopy
from .wancopy.channel import CopyTls, WanCopy, issue_tls

JOB_ID = "wanmig-stream"
#: B's local copy of A's image, once fetched: its file node and the qcow2 over it.
LOCAL_FILE_NODE = "wanmig-a-local-file"
LOCAL_NODE = "wanmig-a-local"
#: Requests ``nbdcopy`` keeps in flight (QEMU's NBD server takes 16 per connection).
FETCH_REQUESTS = 16
STREAM_TIMEOUT_S = 3600.0
#: A's overlay file is made this much larger than the virtual disk (metadata: L2 tables
#: are 1/8192 of the data, refcounts less): see ``extend_sparse``.
OVERLAY_SLACK_DIVISOR = 64
OVERLAY_SLACK_BYTES = 64 * 2**20

#: One step of putting A's image under B's disk: its name in ``layer_steps_ms``, the
#: QMP command and its arguments.
Step = tuple[str, str, dict[str, Any]]


async def extend_sparse(path: Path, disk_mib: int) -> int:
    """Extend the qcow2 file ``path``, sparse, past anything a guest of ``disk_mib`` can
    make it hold, and return its size: an NBD export's size is fixed when B connects,
    and a qcow2 file grows as clusters are allocated.  qcow2 allocates into the unused
    tail (no refcount covers it) instead of growing the file, so B can read every
    cluster A's guest writes after the connection was made."""
    virtual = disk_mib * 2**20
    await asyncio.to_thread(os.truncate, path, virtual + virtual // OVERLAY_SLACK_DIVISOR
                            + OVERLAY_SLACK_BYTES)
    return path.stat().st_size


class PostcopyStorage(NbdCopy):
    name: ClassVar[str] = "postcopy"
    target_on_base: ClassVar[bool] = True
    server_site: ClassVar[str] = "a"
    note: ClassVar[str] = ("B runs at once on its base, A's overlay read over NBD, then "
                           "block-stream")
    #: The node B streams into, and the node below what it streams (the chain's end).
    stream_top: ClassVar[str] = DISK_NODE
    stream_base: ClassVar[str] = DISK_BASE_NODE

    def __init__(self) -> None:
        super().__init__()
        self._layered = False
        self.stream_ms: float | None = None
        self.streamed_bytes: int | None = None
        self.fetch_ms: float | None = None
        self.fetch_bytes: int | None = None
        self.fetch_skipped: str | None = None
        self._exported_size: int | None = None
        self.layer_ms: float | None = None
        self.layer_steps_ms: dict[str, float] = {}
        self.copy_tls: CopyTls | None = None     # ``transport = "wancopy"``
        self._fetch_copy: WanCopy | None = None
        self._fetch_started: asyncio.Task[None] | None = None

    @property
    def pulled(self) -> Path:
        """The image file of A's that B reads over the WAN: A's overlay."""
        assert self.disks is not None, "create() first"
        return self.disks.source

    async def create(self, ctx: RunContext) -> None:
        """The disks; then the file B will read is extended (``extend_sparse``)."""
        await super().create(ctx)
        await self._make_images()
        self._exported_size = await extend_sparse(self.pulled, ctx.scenario.vm.disk_mib)

    def adopt(self, ctx: RunContext, disks: LocalDisks) -> None:
        super().adopt(ctx, disks)
        self._exported_size = self.pulled.stat().st_size

    async def _make_images(self) -> None:
        """Images beyond the two disks (none here)."""

    async def _open_channel(self, ctx: RunContext) -> None:
        """A serves the file B reads; B connects to it now (nothing is read yet).  With
        wancopy, its copies' certificates are issued now too."""
        await self._open_pull(ctx, self.pulled, self.tls)
        if ctx.scenario.storage.wancopy_for(self.name):
            self.copy_tls = await issue_tls(ctx)

    async def copy(self, ctx: RunContext) -> None:
        self.started = time.monotonic()
        ctx.ui.step("postcopy: the disk stays at A until B runs; B reads what A wrote over NBD")
        await self._prestart_fetch(ctx)

    async def switchover(self, ctx: RunContext) -> None:
        self._note_io(ctx)

    def _top_options(self, backing: str) -> dict[str, Any]:
        """``blockdev-reopen`` options that put ``backing`` under the node B streams into."""
        return {"driver": "qcow2", "node-name": DISK_NODE, "file": DISK_FILE_NODE,
                "backing": backing}

    def _layer_steps(self) -> list[Step]:
        """A's overlay, read over NBD with B's base beneath it, becomes the backing of
        B's (empty) overlay."""
        return [
            ("open_overlay", "blockdev-add", {
                "driver": "qcow2", "node-name": PULL_OVERLAY_NODE,
                "file": PULL_FILE_NODE, "backing": self.stream_base, "read-only": True}),
            ("reopen_disk", "blockdev-reopen", {"options": [self._top_options(
                PULL_OVERLAY_NODE)]}),
        ]

    async def before_run(self, ctx: RunContext) -> None:
        """A's image under B's disk, over the WAN (``_layer_steps``), each step timed."""
        assert ctx.dst is not None
        size = self.pulled.stat().st_size
        if size != self._exported_size:
            raise StorageError(f"A's image grew past what B can read over NBD ({size} "
                               f"bytes, exported {self._exported_size}); B is not started")
        steps: list[Step] = [
            # QEMU 10 activates an incoming QEMU's disks only at cont; B's must be active
            # to take a new backing (it still never ran: A's disk is inactive by now)
            ("activate", "blockdev-set-active", {"active": True}),
            ("activate_nbd", "blockdev-set-active", {"node-name": PULL_FILE_NODE,
                                                     "active": True}),
            *self._layer_steps()]
        t0 = t = time.monotonic()
        for name, command, args in steps:
            await ctx.dst.execute(command, args)
            self.layer_steps_ms[name] = round((time.monotonic() - t) * 1000, 1)
            t = time.monotonic()
        self._layered = True
        self.layer_ms = round((time.monotonic() - t0) * 1000, 1)
        if ctx.scenario.storage.verify:
            self.verify_note = ("not compared: B's disk is A's, read over the WAN, until "
                                "the stream ends after B runs")

    async def _fetch(self, ctx: RunContext) -> Path:
        """A's image, frozen since A stopped, copied whole to B's site with many requests
        in flight (``nbdcopy``, skipping holes): ``block-stream`` over NBD reads one
        chunk at a time, each after a round trip or more (3.5-3.9 MB/s on a link that
        drains 12 MB/s, bench storage run 5).  The exported file node is made active
        again first: QEMU's completion left it inactive, and an inactive node answers
        block status with EPERM (the guest's own nodes at A stay inactive)."""
        assert ctx.src is not None
        addr, local = ctx.testbed.addr, self._local
        await ctx.src.execute("blockdev-set-active", {"node-name": PULL_SOURCE_NODE,
                                                      "active": True})
        uri = f"nbd{'s' if self.tls else ''}://{addr.site_a_ip}:{addr.nbd_port}/{PULL_EXPORT}"
        if self.tls:   # the pull channel's client certificates: B's (install_tls)
            uri += f"?tls-certificates={ctx.run_dir / 'tls-nbd-a' / 'tls-source'}"
        sent0 = await tx_bytes(ctx.testbed.site_a, WAN_IFACE)
        await ctx.testbed.site_b.run("nbdcopy", f"--requests={FETCH_REQUESTS}", uri,
                                     str(local), timeout=STREAM_TIMEOUT_S)
        self.fetch_bytes = await tx_bytes(ctx.testbed.site_a, WAN_IFACE) - sent0
        return local

    @property
    def _local(self) -> Path:
        """Where B's site keeps its fetched copy of A's image."""
        assert self.disks is not None, "create() first"
        return self.disks.target.with_name("pulled.qcow2")

    async def _prestart_fetch(self, ctx: RunContext) -> None:
        """With wancopy: the fetch's two ends start and connect in the background while
        the migration goes on (A's image is read only once the fetch runs, after B
        runs), so that only the copy itself is left for then.  Its copy of A's image is a
        fresh overlay on B's base; blocks equal to the base at their offset are left
        out only where that copy sits on that base (postcopy; hybrid's sits on B's
        disk, which differs from the base)."""
        if not ctx.scenario.storage.wancopy_for(self.name):
            return
        assert self.disks is not None
        await create_overlay(self._local, self.disks.base)
        self._fetch_copy = self._new_copy(ctx, source=self.pulled, target=self._local,
                                          label="fetch",
                                          same_offset=self.stream_base == DISK_BASE_NODE)
        # in the background: the migration does not wait for the fetch's processes
        self._fetch_started = asyncio.create_task(self._fetch_copy.start())

    async def _drop_fetch(self) -> None:
        """A fetch started but not run: its start cancelled, both ends killed."""
        task, self._fetch_started = self._fetch_started, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, WanmigError):
                await task
        if self._fetch_copy is not None:
            copy, self._fetch_copy = self._fetch_copy, None
            await copy.kill()

    async def _fetch_wancopy(self, ctx: RunContext) -> Path:
        """A's image's own blocks, frozen since A stopped, into B's copy, with the
        fetch started at the copy (``_prestart_fetch``)."""
        assert self._fetch_copy is not None and self._fetch_started is not None
        copy, started = self._fetch_copy, self._fetch_started
        self._fetch_copy = self._fetch_started = None
        await started      # a start that failed has killed both ends
        await self._run_copy(ctx, copy)
        self.fetch_bytes = copy.wire_bytes
        return self._local

    def _new_copy(self, ctx: RunContext, *, source: Path, target: Path, label: str,
                  same_offset: bool) -> WanCopy:
        assert self.disks is not None and self.copy_tls is not None
        return WanCopy(ctx, source=source, target=target, base=self.disks.base,
                       same_offset=same_offset, label=label, tls=self.copy_tls)

    async def _run_copy(self, ctx: RunContext, copy: WanCopy) -> None:
        """A started wancopy run to its end; both ends stopped whatever happens."""
        try:
            await copy.run(ctx.scenario.storage.timeout_s,
                           moved=lambda: ctx.faults.at("storage-progress"))
            await copy.close()
        finally:
            await copy.kill()
        self.wancopies[copy.label] = copy.summary()

    async def _use_local(self, ctx: RunContext, local: Path) -> None:
        """B's copy of A's image replaces the NBD node under B's top: the stream reads
        it locally."""
        assert ctx.dst is not None
        for args in ({"driver": "file", "node-name": LOCAL_FILE_NODE,
                      "filename": str(local.absolute()), "read-only": True},
                     {"driver": "qcow2", "node-name": LOCAL_NODE, "file": LOCAL_FILE_NODE,
                      "backing": self.stream_base, "read-only": True}):
            await ctx.dst.execute("blockdev-add", args)
        await ctx.dst.execute("blockdev-reopen", {"options": [self._top_options(LOCAL_NODE)]})
        self._layered = False   # B's chain no longer reads over the WAN

    async def finish(self, ctx: RunContext) -> None:
        """B runs: fetch A's image, stream it into B's disk, then B no longer needs A."""
        assert ctx.dst is not None
        t0 = time.monotonic()
        spec = ctx.scenario.storage
        local = None
        if spec.wancopy_for(self.name):
            local = await self._fetch_wancopy(ctx)
        elif spec.fetch and ctx.budget.rate >= ctx.budget.line:
            local = await self._fetch(ctx)
        elif spec.fetch:
            # nbdcopy takes no rate: under a budget below the link the stream reads over
            # NBD at the job's speed instead -- said, not done silently
            self.fetch_skipped = (f"budget {ctx.budget.mbit:g} Mbit/s is below the link "
                                  "and nbdcopy takes no rate: streamed over NBD instead")
            ctx.ui.step(f"{self.name}: no fetch: {self.fetch_skipped}")
        if local is not None:
            self.fetch_ms = round((time.monotonic() - t0) * 1000, 1)
            await self._use_local(ctx, local)
            ctx.ui.step(f"{self.name}: A's image fetched in {self.fetch_ms / 1000:.1f} s "
                        f"({(self.fetch_bytes or 0) / 1e6:.1f} MB); streaming it locally")
        async with budgeted(ctx.budget, ctx.dst, JOB_ID) as speed:
            await ctx.dst.execute("block-stream", {
                "job-id": JOB_ID, "device": self.stream_top, "base-node": self.stream_base,
                "auto-dismiss": False, "speed": speed})
            await wait_concluded(ctx.dst, JOB_ID, STREAM_TIMEOUT_S, what="the disk stream",
                                 on_progress=ProgressSteps(ctx.ui.step, f"{self.name}: stream"))
        self.stream_ms = round((time.monotonic() - t0) * 1000, 1)
        # the job's progress counts the whole disk; it copied at most what A's image
        # holds (a block B's guest rewrote first is skipped: bytes_on_wire says)
        self.streamed_bytes = (await disk_facts(self.pulled)).top_bytes
        self.copied_bytes = (self.copied_bytes or 0) + self.streamed_bytes
        fetched, self._layered = self.fetch_ms is not None, False
        await self._in_sync(ctx)
        await self._closed()
        if fetched:   # out of the chain since the stream
            for node in (LOCAL_NODE, LOCAL_FILE_NODE):
                await ctx.dst.execute("blockdev-del", {"node-name": node})

    def borrows_from_source(self) -> bool:
        """B's disk reads through A (blocks not fetched or streamed yet) while layered."""
        return self._layered

    async def _close(self, ctx: RunContext) -> None:
        # B's chain still reads through the pull channel until the stream ended
        await self._close_pull(ctx, in_use=self._layered)
        self.closed = time.monotonic()

    async def rollback(self, ctx: RunContext) -> None:
        self._layered = False   # B never ran: it is fenced, its chain no longer matters
        await self._drop_fetch()
        await self._abandon(ctx, JOB_ID, "the disk stream")

    async def check(self) -> None:
        """A fetch started but never run (the run ended before B's stream) stopped first."""
        await self._drop_fetch()
        await super().check()

    async def _count_wire(self, ctx: RunContext) -> None:
        """What B read over the pull channel, and the fetch (its connections have closed:
        A's WAN interface counted it, headers included)."""
        await super()._count_wire(ctx)
        self.wire_bytes = (self.wire_bytes or 0) + (self.fetch_bytes or 0)

    def extra_record(self) -> dict[str, Any]:
        return {"stream_ms": self.stream_ms, "streamed_bytes": self.streamed_bytes,
                "fetch_ms": self.fetch_ms, "fetch_bytes": self.fetch_bytes,
                "fetch_skipped": self.fetch_skipped,
                "layer_ms": self.layer_ms,
                "layer_steps_ms": self.layer_steps_ms or None}
