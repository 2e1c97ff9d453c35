"""Choosing the accelerator: KVM in production, TCG where KVM does not work.

``auto`` boots a probe guest under KVM and uses KVM only if the guest reaches
its ready line in time; otherwise TCG.  The verdict is cached next to the
guest image, keyed by the host kernel, the QEMU binary and the guest image, so
the probe runs once per machine and image.  On the machines this project is
developed on ``/dev/kvm`` exists but Linux guests hang under it, which is
exactly what the probe detects.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

from ..errors import ConfigError, QemuError
from ..registry import Registry
from .binary import qemu_binary
from .image import READY_MARKER, GuestImage, create_data_disk
from .process import QemuVm, VmConfig

ACCELERATORS = ("auto", "kvm", "tcg")
PROBE_TIMEOUT_S = 20.0

log = logging.getLogger("wanmig.qemu.accel")


def _cache_key(image: GuestImage) -> str:
    qemu = qemu_binary()
    return (f"{platform.release()}|{qemu.path}|{os.stat(qemu.path).st_mtime_ns}|"
            f"{qemu.banner}|{image.digest}")


async def resolve_accel(setting: str, image: GuestImage, cache_dir: Path) -> str:
    """Turn ``auto``/``kvm``/``tcg`` into the accelerator to launch with."""
    if setting not in ACCELERATORS:
        raise ConfigError(f"must be one of {', '.join(ACCELERATORS)}", field="vm.accel")
    if setting != "auto":
        return setting
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    cache = cache_dir / "accel.json"
    key = _cache_key(image)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return str(cached["accel"])
    except (OSError, ValueError):
        pass
    verdict = "kvm" if await _kvm_boots(image) else "tcg"
    log.info("accelerator probe: %s", verdict)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accel": verdict}))
    return verdict


async def _kvm_boots(image: GuestImage) -> bool:
    """Boot the guest under KVM with no network peer and wait for its ready line.

    No QMP: the probe only reads the console, and where KVM does not work QEMU
    often aborts while it sets up the vCPU, after binding its QMP socket, so a
    connection would be dropped mid-handshake (qemu.qmp logs that as ERROR
    lines a user reads as wanmig failing).  That exit is the verdict.
    """
    registry = Registry(run_id="kvmprobe")
    disk = registry.run_dir / "probe-disk.raw"
    try:
        create_data_disk(disk, size_mib=8)
        cfg = VmConfig(name="kvm-probe", image=image, disk=disk, ram_mib=256,
                       mac="52:54:00:77:ff:01", tap=None, ip_cidr="10.254.0.1/24",
                       accel="kvm")
        vm = QemuVm(cfg, registry)
        try:
            await vm.start(qmp=False)
            await vm.wait_console(READY_MARKER, PROBE_TIMEOUT_S)
            return True
        except QemuError as exc:
            log.info("KVM probe guest did not boot: %s", exc)
            return False
        finally:
            await vm.kill()
    finally:
        registry.close()
