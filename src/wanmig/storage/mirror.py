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
from pathlib import Path
from typing import Any, ClassVar

from ..context import RunContext, StoragePart
from ..errors import StorageError
from ..memory.parts import install_tls
from ..memory.plan import TlsSettings
from ..qemu.process import DISK_NODE
from ..record import StorageResult
from . import nbd
from .disk import DiskComparison, DiskFacts, FsckResult, LocalDisks, compare, disk_facts, fsck
from .jobs import ProgressSteps, job_status, wait_concluded, wait_ready

JOB_ID = "wanmig-mirror"
#: A ready mirror with the guest paused has only in-flight writes left.
CANCEL_TIMEOUT_S = 60.0


class MirrorStorage(StoragePart):
    name: ClassVar[str] = "mirror"

    def __init__(self) -> None:
        self.disks: LocalDisks | None = None
        self.tls: TlsSettings | None = None
        self.source_facts: DiskFacts | None = None
        self.started: float | None = None
        self.ready_at: float | None = None
        self.ended: float | None = None
        self.ctx: RunContext | None = None
        self.wire_bytes: int | None = None
        self.copied_bytes: int | None = None
        self.comparison: DiskComparison | None = None
        self.verify_ms: float | None = None
        self.fsck_result: FsckResult | None = None
        self._attached = self._serving = False

    # -- disks ------------------------------------------------------------------

    @property
    def resumed(self) -> float | None:
        """When B ran (the engine's ``resumed_at``), or None."""
        return self.ctx.resumed_at if self.ctx is not None else None

    async def create(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.disks = LocalDisks.at(ctx.run_dir)
        await self.disks.create(ctx.scenario.vm.disk_mib, target_on_base=False)

    def disk_for(self, site: str) -> Path:
        assert self.disks is not None, "create() first"
        return self.disks.for_site(site)

    @property
    def log_disk(self) -> Path | None:
        """B's disk once B has run; A's when the guest never left it."""
        if self.disks is None:
            return None
        return self.disks.target if self.resumed is not None else self.disks.source

    # -- hooks ------------------------------------------------------------------

    async def prepare(self, ctx: RunContext) -> None:
        assert ctx.src is not None and ctx.dst is not None and self.disks is not None
        if ctx.scenario.memory.tls:
            self.tls = await install_tls(ctx, "tls-nbd", object_id=nbd.TLS_OBJECT_ID,
                                         authz_id=nbd.TLS_AUTHZ_ID)
        addr = ctx.testbed.addr
        await nbd.serve_disk(ctx.dst, addr.site_b_ip, addr.nbd_port, self.tls)
        self._serving = True
        await nbd.attach_target(ctx.src, addr.site_b_ip, addr.nbd_port, self.tls)
        self._attached = True
        self.source_facts = await disk_facts(self.disks.source)

    async def copy(self, ctx: RunContext) -> None:
        assert ctx.src is not None
        facts = self.source_facts
        ctx.ui.step(f"mirror: copying the disk to B over NBD"
                    + (f" ({facts.allocated_bytes / 1e6:.1f} MB allocated of "
                       f"{facts.virtual_bytes / 1e6:.0f} MB)" if facts else ""))
        self.started = time.monotonic()
        spec = ctx.scenario.storage
        await ctx.src.execute("blockdev-mirror", {
            "job-id": JOB_ID, "device": DISK_NODE, "target": nbd.TARGET_NODE,
            "sync": "full", "auto-dismiss": False,
            "copy-mode": "write-blocking" if spec.synchronous_writes else "background"})
        await wait_ready(ctx.src, JOB_ID, spec.timeout_s, what="the disk mirror",
                         on_progress=ProgressSteps(ctx.ui.step, "mirror"))
        self.ready_at = time.monotonic()
        ctx.ui.step(f"mirror: ready after {self.ready_at - self.started:.1f} s; it copies the "
                    f"guest's writes as they happen until the switchover")

    async def switchover(self, ctx: RunContext) -> None:
        """The source is paused: end the mirror in sync, close the NBD channel."""
        assert ctx.src is not None and ctx.dst is not None
        await ctx.src.execute("block-job-cancel", {"device": JOB_ID})
        st = await wait_concluded(ctx.src, JOB_ID, CANCEL_TIMEOUT_S, what="the disk mirror")
        self.ended = time.monotonic()
        self.copied_bytes = st.done
        addr = ctx.testbed.addr
        self.wire_bytes = await nbd.bytes_sent(ctx.testbed, addr.site_b_ip, addr.nbd_port)
        await self._close(ctx)

    async def verify(self, ctx: RunContext) -> None:
        """Verify mode: both disks compared while B waits paused; a difference is a
        StorageError while B has never run."""
        if not ctx.scenario.storage.verify or self.disks is None:
            return
        ctx.ui.step("verify: comparing the disks at A and B block by block")
        t0 = time.monotonic()
        self.comparison = await compare(self.disks.source, self.disks.target)
        self.verify_ms = round((time.monotonic() - t0) * 1000, 1)
        if not self.comparison.match:
            raise StorageError(f"verify: the disks at A and B differ "
                               f"({self.comparison.detail}); B is not started")

    async def rollback(self, ctx: RunContext) -> None:
        assert ctx.src is not None
        if await job_status(ctx.src, JOB_ID) is not None:
            await ctx.src.execute("block-job-cancel", {"device": JOB_ID, "force": True})
            try:
                await wait_concluded(ctx.src, JOB_ID, CANCEL_TIMEOUT_S, what="the disk mirror")
            except StorageError:  # a failed job is what we are cancelling
                pass
        await self._close(ctx)

    async def _close(self, ctx: RunContext) -> None:
        if self._attached and ctx.src is not None:
            await nbd.detach_target(ctx.src)
            self._attached = False
        if self._serving and ctx.dst is not None and ctx.dst.returncode is None:
            await nbd.stop_serving(ctx.dst)
            self._serving = False

    async def check(self) -> None:
        """After both QEMUs stopped: B's filesystem is whole (``e2fsck -fn``)."""
        if self.disks is not None and self.resumed is not None:
            self.fsck_result = await fsck(self.disks.target)

    # -- record -----------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        def ms(a: float | None, b: float | None) -> float | None:
            return round((b - a) * 1000, 1) if a is not None and b is not None else None

        facts = self.source_facts
        return StorageResult(
            strategy=self.name, note="libvirt --copy-storage-all: blockdev-mirror sync=full "
            "to B's NBD export" + ("" if self.tls else ", without TLS"),
            total_ms=ms(self.started, self.ended), ready_ms=ms(self.started, self.ready_at),
            time_to_dest_running_ms=ms(self.started, self.resumed),
            bytes_on_wire=self.wire_bytes, copied_bytes=self.copied_bytes,
            disk_bytes=facts.allocated_bytes if facts else None,
            disk=facts.summary() if facts else None, tls=self.tls is not None).model_dump()

    def integrity(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.comparison is not None:
            out |= {"disk_match": self.comparison.match,
                    "disk_first_difference": self.comparison.first_difference,
                    "disk_verify_ms": self.verify_ms}
        if self.fsck_result is not None:
            out |= {"disk_fsck_clean": self.fsck_result.clean,
                    "disk_fsck_problems": self.fsck_result.problems or None}
        return out
