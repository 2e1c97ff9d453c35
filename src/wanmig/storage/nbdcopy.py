"""What every strategy that copies a local disk over QEMU's NBD has in common.

``NbdCopy`` owns the run's ``LocalDisks``, the storage channels' TLS, their
NBD servers and clients -- the *push* channel (B serves its disk, A writes
to it) and the *pull* channel (A serves an image file, B reads it:
``postcopy``; ``hybrid`` uses both) -- the verify-mode comparison, the
e2fsck after the run and the record.  A strategy (``mirror``, ``precopy``,
``postcopy``, ``hybrid``) says how
B's disk starts (``target_on_base``), how the copy runs (``copy``, and
``finish`` for what goes on after B runs) and how it ends (``switchover``,
``before_run``, ``_close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, ClassVar

from ..context import RunContext, StoragePart
from ..errors import StorageError, WanmigError
from ..memory.parts import install_tls
from ..memory.plan import TlsSettings
from ..record import StorageResult
from . import nbd
from .base import base_image
from .disk import (DiskComparison, DiskFacts, FsckResult, LocalDisks, check_room, compare,
                   disk_facts, fsck)
from .diskio import diskio_from_lines
from .jobs import job_status, wait_concluded


#: How long a cancelled job may take to go (a rollback).
ABANDON_TIMEOUT_S = 60.0
#: The pull channel (B reads an image file of A's; ``postcopy``, ``hybrid``): the file
#: node at A, its export, B's NBD client of it, and the qcow2 B layers over that.
PULL_SOURCE_NODE = "wanmig-pull-file"
PULL_EXPORT = "pull"
PULL_FILE_NODE = "wanmig-a-file"
PULL_OVERLAY_NODE = "wanmig-a-overlay"


def elapsed_ms(a: float | None, b: float | None) -> float | None:
    return round((b - a) * 1000, 1) if a is not None and b is not None else None


class NbdCopy(StoragePart):
    """A local disk at each site, copied from A to B's NBD export."""

    name: ClassVar[str] = "nbd-copy"
    #: B's disk: an overlay on its own copy of the base (True), or an empty image.
    target_on_base: ClassVar[bool] = False
    note: ClassVar[str] = ""

    def __init__(self) -> None:
        self.ctx: RunContext | None = None
        self.disks: LocalDisks | None = None
        self.tls: TlsSettings | None = None
        self.source_facts: DiskFacts | None = None
        self.started: float | None = None       # the copy began
        self.ready_at: float | None = None      # its first full pass ended
        self.ended: float | None = None         # the disk was in sync at B
        self.closed: float | None = None        # ... and its channel closed
        self.wire_bytes: int | None = None
        self.copied_bytes: int | None = None
        self.comparison: DiskComparison | None = None
        self.verify_ms: float | None = None
        self.verify_note: str | None = None
        self.fsck_result: FsckResult | None = None
        self.io: dict[str, Any] = {}
        self._io_from = 0
        self._attached = self._serving = False              # the push channel
        self._pull_attached = self._pull_serving = False    # the pull channel
        self._closing: asyncio.Task[None] | None = None
        #: ``storage.transport = "wancopy"``: each copy's summary, by its label.
        self.wancopies: dict[str, dict[str, Any]] = {}

    @property
    def resumed(self) -> float | None:
        """When B ran (the engine's ``resumed_at``), or None."""
        return self.ctx.resumed_at if self.ctx is not None else None

    # -- disks ------------------------------------------------------------------

    async def create(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.disks = LocalDisks.at(ctx.run_dir, await base_image(ctx))
        await self.disks.create(ctx.scenario.vm.disk_mib, target_on_base=self.target_on_base)

    def adopt(self, ctx: RunContext, disks: LocalDisks) -> None:
        """Take over disks another part made (``auto`` makes them before it chooses)."""
        self.ctx, self.disks = ctx, disks

    def disk_for(self, site: str) -> Path:
        assert self.disks is not None, "create() first"
        return self.disks.for_site(site)

    @property
    def log_disk(self) -> Path | None:
        """B's disk once B has run; A's when the guest never left it."""
        if self.disks is None:
            return None
        return self.disks.target if self.resumed is not None else self.disks.source

    # -- the channel --------------------------------------------------------------

    #: Which site's QEMU serves the NBD channel (B receives writes; A serves reads).
    server_site: ClassVar[str] = "b"

    async def prepare(self, ctx: RunContext) -> None:
        assert ctx.src is not None and ctx.dst is not None and self.disks is not None
        self.tls = await self._channel_tls(ctx, self.server_site)
        self.source_facts = facts = await disk_facts(self.disks.source)
        # B receives the whole allocated disk, or (B holds the base) A's overlay
        await asyncio.to_thread(check_room, self.disks.target.parent,
                                facts.top_bytes if self.target_on_base
                                else facts.allocated_bytes)
        await self._open_channel(ctx)
        self._io_from = len(ctx.src.console_lines())

    @staticmethod
    async def _channel_tls(ctx: RunContext, server_site: str) -> TlsSettings | None:
        """The certificates of the channel ``server_site`` serves (None: ``--insecure``)."""
        if not ctx.scenario.memory.tls:
            return None
        object_id, authz_id = nbd.tls_ids(server_site)
        return await install_tls(ctx, f"tls-nbd-{server_site}", object_id=object_id,
                                 authz_id=authz_id, server_site=server_site)

    async def _open_channel(self, ctx: RunContext) -> None:
        """The strategy's channel: by default A pushes to B's disk."""
        await self._open_push(ctx, self.tls)

    async def _open_push(self, ctx: RunContext, tls: TlsSettings | None) -> None:
        """B serves its disk, A opens it as ``nbd.TARGET_NODE``: A writes to B."""
        assert ctx.src is not None and ctx.dst is not None
        addr = ctx.testbed.addr
        await nbd.serve_disk(ctx.dst, addr.site_b_ip, addr.nbd_port, tls)
        self._serving = True
        await nbd.attach_target(ctx.src, addr.site_b_ip, addr.nbd_port, tls)
        self._attached = True

    async def _open_pull(self, ctx: RunContext, path: Path, tls: TlsSettings | None) -> None:
        """A serves the image *file* ``path`` read-only (``locking=off``, O_DIRECT: the
        guest's own nodes hold it too); B connects now, so the TLS handshake is not in
        the outage, and reads nothing yet (``PULL_FILE_NODE``)."""
        assert ctx.src is not None and ctx.dst is not None
        addr = ctx.testbed.addr
        await ctx.src.execute("blockdev-add", {
            "driver": "file", "node-name": PULL_SOURCE_NODE, "filename": str(path.absolute()),
            "read-only": True, "locking": "off", "cache": {"direct": True}, "aio": "threads"})
        await nbd.serve_node(ctx.src, addr.site_a_ip, addr.nbd_port, tls,
                             node=PULL_SOURCE_NODE, name=PULL_EXPORT, writable=False)
        self._pull_serving = True
        await nbd.attach_node(ctx.dst, addr.site_a_ip, addr.nbd_port, tls,
                              node=PULL_FILE_NODE, export=PULL_EXPORT, read_only=True)
        self._pull_attached = True

    async def _wire(self, ctx: RunContext, server_site: str) -> int:
        """The bytes site A has sent so far on the channel ``server_site`` serves (read
        before it closes)."""
        addr = ctx.testbed.addr
        return await nbd.bytes_sent(
            ctx.testbed, ("dst", addr.site_b_ip, "dport", "=", str(addr.nbd_port))
            if server_site == "b" else ("sport", "=", str(addr.nbd_port)))

    async def _count_wire(self, ctx: RunContext) -> None:
        """The channel's bytes, as site A sent them (read before it closes)."""
        self.wire_bytes = await self._wire(ctx, self.server_site)

    def _note_io(self, ctx: RunContext) -> None:
        """The guest's disk write latency (``diskio``) before the copy and during it, from
        A's console; called as the switchover begins."""
        assert ctx.src is not None
        lines = ctx.src.console_lines()
        self.io = {**diskio_from_lines(lines[:self._io_from]).summary("guest_io_before"),
                   **diskio_from_lines(lines[self._io_from:]).summary("guest_io")}

    async def _in_sync(self, ctx: RunContext) -> None:
        """The disk is in sync at B: note when, count the channel's bytes, close it."""
        self.ended = time.monotonic()
        await self._count_wire(ctx)
        self._close_later(ctx)

    async def _abandon(self, ctx: RunContext, job_id: str, what: str) -> None:
        """Rollback: a pending close finished, a job still there cancelled, the channel
        closed (the guest stays at A)."""
        assert ctx.src is not None
        with contextlib.suppress(WanmigError):
            await self._closed()
        st = await job_status(ctx.src, job_id)
        if st is not None:
            # a job whose target died (B is fenced first) may have ended by itself
            if st.status != "concluded":
                await ctx.src.execute("block-job-cancel", {"device": job_id, "force": True})
            with contextlib.suppress(StorageError):   # a failed job is what we cancel
                await wait_concluded(ctx.src, job_id, ABANDON_TIMEOUT_S, what=what)
        await self._close(ctx)

    def _close_later(self, ctx: RunContext) -> None:
        """Close the channel while the memory part completes (``before_run`` waits for it,
        before B runs): the disk is in sync, nothing more crosses on it."""
        self._closing = asyncio.create_task(self._close(ctx))

    async def _closed(self) -> None:
        if self._closing is not None:
            task, self._closing = self._closing, None
            await task

    async def _close(self, ctx: RunContext) -> None:
        await self._close_push(ctx)
        self.closed = time.monotonic()

    async def _close_push(self, ctx: RunContext) -> None:
        if self._attached and ctx.src is not None:
            await nbd.detach_target(ctx.src)
            self._attached = False
        if self._serving and ctx.dst is not None and ctx.dst.returncode is None:
            await nbd.stop_serving(ctx.dst)
            self._serving = False

    async def _close_pull(self, ctx: RunContext, *, in_use: bool) -> None:
        """B's client of A's file goes unless ``in_use`` (B's disk still reads through
        it: ``PULL_FILE_NODE`` and the qcow2 over it, ``PULL_OVERLAY_NODE``); A stops
        serving."""
        if self._pull_attached and ctx.dst is not None and ctx.dst.returncode is None:
            if not in_use:
                with contextlib.suppress(WanmigError):   # only once it was layered
                    await ctx.dst.execute("blockdev-del", {"node-name": PULL_OVERLAY_NODE})
                await ctx.dst.execute("blockdev-del", {"node-name": PULL_FILE_NODE})
                self._pull_attached = False
        if self._pull_serving and ctx.src is not None and ctx.src.returncode is None:
            await nbd.stop_serving(ctx.src)
            await ctx.src.execute("blockdev-del", {"node-name": PULL_SOURCE_NODE})
            self._pull_serving = False

    def instants(self) -> dict[str, float]:
        """The switchover's storage steps: the disk in sync at B, its channel closed."""
        out = {}
        if self.ended is not None:
            out["disk_in_sync"] = self.ended
        if self.closed is not None and self.ended is not None:
            out["disk_channel_closed"] = self.closed
        return out

    # -- checks -------------------------------------------------------------------

    async def before_run(self, ctx: RunContext) -> None:
        """The channel closed; in verify mode both disks compared while B waits paused
        (a difference is a StorageError while B has never run)."""
        await self._closed()
        if not ctx.scenario.storage.verify or self.disks is None:
            return
        ctx.ui.step("verify: comparing the disks at A and B block by block")
        t0 = time.monotonic()
        self.comparison = await compare(self.disks.source, self.disks.target)
        self.verify_ms = round((time.monotonic() - t0) * 1000, 1)
        if not self.comparison.match:
            raise StorageError(f"verify: the disks at A and B differ "
                               f"({self.comparison.detail}); B is not started")

    async def check(self) -> None:
        """After both QEMUs stopped: B's filesystem is whole (``e2fsck -fn``)."""
        disk = self.log_disk
        if disk is not None and self.resumed is not None:
            self.fsck_result = await fsck(disk)

    # -- record -------------------------------------------------------------------

    def extra_record(self) -> dict[str, Any]:
        """The strategy's own fields of the storage block."""
        return {}

    def reduction(self) -> dict[str, Any]:
        """What the copy left off the wire, and why.  ``zero_bytes_skipped``: what the
        disk's chain knows is zero (block status skips it on every transport), and the
        blocks of zeros wancopy found in the data; ``dedup_bytes_skipped``: what B
        already held -- the base under an overlay on it (every strategy but ``mirror``)
        and, with wancopy, blocks B held by content; ``compress_ratio``: the data's
        bytes over what crossed for them (QEMU's NBD does not compress: 1)."""
        facts = self.source_facts
        if facts is None:
            return {}
        zero = facts.zero_bytes
        dedup = facts.allocated_bytes - facts.top_bytes if self.target_on_base else 0
        data = wire = 0
        for copy in self.wancopies.values():
            zero += copy["zero_found_bytes"]
            dedup += copy["dedup_bytes"]
            data, wire = data + copy["data_bytes"], wire + copy["data_wire_bytes"]
        return {"zero_bytes_skipped": zero, "dedup_bytes_skipped": dedup,
                "compress_ratio": round(data / wire, 3) if wire else 1.0,
                "transport": (None if self.ctx is None else
                              "wancopy" if self.ctx.scenario.storage.wancopy_for(self.name)
                              else "qemu"),
                "wancopy": self.wancopies or None}

    def record(self) -> dict[str, Any]:
        facts = self.source_facts
        return StorageResult(
            strategy=self.name, note=self.note + ("" if self.tls else ", without TLS")
            + (", frozen images over wancopy" if self.wancopies else ""),
            total_ms=elapsed_ms(self.started, self.ended),
            ready_ms=elapsed_ms(self.started, self.ready_at),
            time_to_dest_running_ms=elapsed_ms(self.started, self.resumed),
            bytes_on_wire=self.wire_bytes, copied_bytes=self.copied_bytes,
            disk_bytes=facts.allocated_bytes if facts else None,
            disk=facts.summary() if facts else None, tls=self.tls is not None,
            **self.reduction(), **self.io, **self.extra_record()).model_dump()

    def integrity(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.comparison is not None:
            out |= {"disk_match": self.comparison.match,
                    "disk_first_difference": self.comparison.first_difference,
                    "disk_verify_ms": self.verify_ms}
        if self.verify_note is not None:
            out["disk_verify_note"] = self.verify_note
        if self.fsck_result is not None:
            out |= {"disk_fsck_clean": self.fsck_result.clean,
                    "disk_fsck_problems": self.fsck_result.problems or None}
        return out
