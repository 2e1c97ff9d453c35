"""The KVM probe behind ``vm.accel = "auto"`` on real QEMU: a verdict, no noise.

Where ``/dev/kvm`` exists but KVM does not work (this machine: QEMU aborts
setting up the vCPU, "failed to set MSR"), the probe's QEMU dies right after
binding its QMP socket.  The probe reads the console only, so nothing of
qemu.qmp's ("Negotiation failed: EOFError") reaches a user's terminal.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from wanmig import registry
from wanmig.qemu.accel import resolve_accel
from wanmig.qemu.image import build_image

pytestmark = [
    pytest.mark.root,
    pytest.mark.qemu,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed"),
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                       reason="no usable /dev/kvm: auto means TCG without a probe"),
]


async def test_kvm_probe_gives_a_verdict_and_qemu_qmp_logs_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(registry, "STATE_DIR", tmp_path / "state")  # a private run dir
    image = build_image()  # cached in ./build after the first run
    caplog.set_level(logging.DEBUG, logger="qemu.qmp")  # whatever the CLI would filter
    cache = tmp_path / "cache"  # no accel.json: the probe runs
    verdict = await resolve_accel("auto", image, cache)
    assert verdict in ("kvm", "tcg")
    assert json.loads((cache / "accel.json").read_text())["accel"] == verdict
    loud = [f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records
            if r.name.startswith("qemu.qmp") and r.levelno >= logging.WARNING]
    assert loud == []
    # the probe's run is forgotten: no registry file, no run directory, no process
    assert list((tmp_path / "state").iterdir()) == []
    # and the cached verdict is reused without a second probe
    assert await resolve_accel("auto", image, cache) == verdict
