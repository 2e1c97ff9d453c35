"""``shared`` storage: both sites open the same disk image, nothing to copy.

The guest's data disk (an ext2 image holding its integrity log) is created
in the run directory; the source and the destination QEMU open that one
file with ``cache=none``, so no host-side dirty state stays behind in either
QEMU at the switchover.  This is the baseline the local-disk strategies are
measured against: zero bytes of disk on the WAN.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

from ..context import RunContext, StoragePart
from ..qemu.image import create_data_disk
from ..record import StorageResult
from .base import base_image
from .disk import create_overlay


class SharedStorage(StoragePart):
    name: ClassVar[str] = "shared"

    def __init__(self) -> None:
        self.image: Path | None = None

    async def create(self, ctx: RunContext) -> None:
        """The data disk, before the source boots: a raw ext2 image, or with the
        ``debian`` base an overlay on it."""
        vm = ctx.scenario.vm
        if (base := await base_image(ctx)) is not None:
            self.image = ctx.run_dir / "disk.qcow2"
            await create_overlay(self.image, base)
            return
        self.image = ctx.run_dir / "disk.raw"
        await asyncio.to_thread(create_data_disk, self.image, vm.disk_mib)

    def disk_for(self, site: str) -> Path:
        """The image the QEMU at ``site`` opens: the same one at both."""
        assert self.image is not None, "create() first"
        return self.image

    @property
    def log_disk(self) -> Path | None:
        """Where the guest's integrity log is read from after the run."""
        return self.image

    def record(self) -> dict[str, Any]:
        return StorageResult(strategy=self.name, bytes_on_wire=0,
                             note="both sites open the same disk image").model_dump()
