"""``postcopy``: memory first; B runs at once, its disk's missing blocks fetched from A
(Hirofuchi et al.'s xNBD, with QEMU's own block layer in the proxy's place).

Nothing of the disk crosses before the switchover.  B's disk is an overlay
on B's own base.  At A, a second, read-only node on A's overlay *file* (made
larger up front, sparse, so that it never grows past what B connected to: see
``create``; the
qcow2 container itself, ``locking=off``, O_DIRECT) is exported over NBD from
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
import os
import time
from typing import Any, ClassVar

from ..context import RunContext
from ..errors import StorageError
from ..qemu.process import DISK_BASE_NODE, DISK_FILE_NODE, DISK_NODE
from . import nbd
from .jobs import ProgressSteps, wait_concluded
from .nbdcopy import NbdCopy

JOB_ID = "wanmig-stream"
SOURCE_FILE_NODE = "wanmig-overlay-file"   # at A: A's overlay file, read-only
SOURCE_EXPORT = "overlay"
REMOTE_FILE_NODE = "wanmig-a-file"         # at B: NBD client of that export
REMOTE_OVERLAY_NODE = "wanmig-a-overlay"   # at B: qcow2 over it, backed by B's base
STREAM_TIMEOUT_S = 3600.0
#: A's overlay file is made this much larger than the virtual disk (metadata: L2 tables
#: are 1/8192 of the data, refcounts less): see ``create``.
OVERLAY_SLACK_DIVISOR = 64
OVERLAY_SLACK_BYTES = 64 * 2**20


class PostcopyStorage(NbdCopy):
    name: ClassVar[str] = "postcopy"
    target_on_base: ClassVar[bool] = True
    server_site: ClassVar[str] = "a"
    note: ClassVar[str] = ("B runs at once on its base, A's overlay read over NBD, then "
                           "block-stream")

    def __init__(self) -> None:
        super().__init__()
        self._layered = False
        self.stream_ms: float | None = None
        self._exported_size: int | None = None
        self.layer_ms: float | None = None
        self.layer_steps_ms: dict[str, float] = {}

    async def create(self, ctx: RunContext) -> None:
        """The disks; then A's overlay file is extended, sparse, past anything the guest
        can make it hold: an NBD export's size is fixed when B connects, and a qcow2
        file grows as clusters are allocated.  qcow2 allocates into the unused tail
        (no refcount covers it) instead of growing the file, so B can read every
        cluster A's guest writes after the connection was made."""
        await super().create(ctx)
        assert self.disks is not None
        virtual = ctx.scenario.vm.disk_mib * 2**20
        await asyncio.to_thread(os.truncate, self.disks.source,
                                virtual + virtual // OVERLAY_SLACK_DIVISOR + OVERLAY_SLACK_BYTES)
        self._exported_size = self.disks.source.stat().st_size

    async def _open_channel(self, ctx: RunContext) -> None:
        """A serves its overlay file; B connects to it now (nothing is read yet)."""
        assert ctx.src is not None and ctx.dst is not None and self.disks is not None
        addr = ctx.testbed.addr
        await ctx.src.execute("blockdev-add", {
            "driver": "file", "node-name": SOURCE_FILE_NODE,
            "filename": str(self.disks.source.absolute()), "read-only": True,
            "locking": "off", "cache": {"direct": True}, "aio": "threads"})
        await nbd.serve_node(ctx.src, addr.site_a_ip, addr.nbd_port, self.tls,
                             node=SOURCE_FILE_NODE, name=SOURCE_EXPORT, writable=False)
        self._serving = True
        await nbd.attach_node(ctx.dst, addr.site_a_ip, addr.nbd_port, self.tls,
                              node=REMOTE_FILE_NODE, export=SOURCE_EXPORT, read_only=True)
        self._attached = True

    async def copy(self, ctx: RunContext) -> None:
        self.started = time.monotonic()
        ctx.ui.step("postcopy: the disk stays at A until B runs; B reads what A wrote over NBD")

    async def switchover(self, ctx: RunContext) -> None:
        self._note_io(ctx)

    async def before_run(self, ctx: RunContext) -> None:
        """A's overlay under B's disk, over the WAN, with B's base beneath it."""
        assert ctx.dst is not None and self.disks is not None
        size = self.disks.source.stat().st_size
        if size != self._exported_size:
            raise StorageError(f"A's overlay grew past what B can read over NBD ({size} "
                               f"bytes, exported {self._exported_size}); B is not started")
        steps = (
            # QEMU 10 activates an incoming QEMU's disks only at cont; B's must be active
            # to take a new backing (it still never ran: A's disk is inactive by now)
            ("activate", "blockdev-set-active", {"active": True}),
            ("activate_nbd", "blockdev-set-active", {"node-name": REMOTE_FILE_NODE,
                                                     "active": True}),
            ("open_overlay", "blockdev-add", {
                "driver": "qcow2", "node-name": REMOTE_OVERLAY_NODE,
                "file": REMOTE_FILE_NODE, "backing": DISK_BASE_NODE, "read-only": True}),
            ("reopen_disk", "blockdev-reopen", {"options": [{
                "driver": "qcow2", "node-name": DISK_NODE, "file": DISK_FILE_NODE,
                "backing": REMOTE_OVERLAY_NODE}]}),
        )
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

    async def finish(self, ctx: RunContext) -> None:
        """B runs: stream A's overlay into B's, then B no longer needs A."""
        assert ctx.dst is not None
        t0 = time.monotonic()
        await ctx.dst.execute("block-stream", {
            "job-id": JOB_ID, "device": DISK_NODE, "base-node": DISK_BASE_NODE,
            "auto-dismiss": False})
        st = await wait_concluded(ctx.dst, JOB_ID, STREAM_TIMEOUT_S, what="the disk stream",
                                  on_progress=ProgressSteps(ctx.ui.step, "postcopy: stream"))
        self.stream_ms = round((time.monotonic() - t0) * 1000, 1)
        self.copied_bytes = st.done
        self._layered = False
        await self._in_sync(ctx)
        await self._closed()

    async def _close(self, ctx: RunContext) -> None:
        if self._attached and ctx.dst is not None and ctx.dst.returncode is None:
            if not self._layered:   # still in B's chain: B's disk needs it
                await ctx.dst.execute("blockdev-del", {"node-name": REMOTE_OVERLAY_NODE})
                await ctx.dst.execute("blockdev-del", {"node-name": REMOTE_FILE_NODE})
                self._attached = False
        if self._serving and ctx.src is not None and ctx.src.returncode is None:
            await nbd.stop_serving(ctx.src)
            await ctx.src.execute("blockdev-del", {"node-name": SOURCE_FILE_NODE})
            self._serving = False
        self.closed = time.monotonic()

    async def rollback(self, ctx: RunContext) -> None:
        self._layered = False   # B never ran: it is fenced, its chain no longer matters
        await self._abandon(ctx, JOB_ID, "the disk stream")

    def extra_record(self) -> dict[str, Any]:
        return {"stream_ms": self.stream_ms, "layer_ms": self.layer_ms,
                "layer_steps_ms": self.layer_steps_ms or None}
