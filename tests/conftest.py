"""Shared fixtures and markers.

Integration tests (markers ``root`` and ``qemu``) need root, network
namespaces and QEMU; they are skipped with a reason when those are missing,
never silently passed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    have_qemu = shutil.which("qemu-system-x86_64") is not None
    for item in items:
        if "root" in item.keywords and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces)"))
        if "qemu" in item.keywords and not have_qemu:
            item.add_marker(pytest.mark.skip(reason="needs qemu-system-x86_64 (make setup)"))


RUN_NETNS = re.compile(r"^wm[0-9a-f]{6}-[a-z]{1,2}$")  # the testbed's names: wm<run id>-<role>


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def run_netns_names() -> set[str]:
    """Namespaces named like a wanmig run's (other tools' namespaces are not ours)."""
    return {n for n in netns_names() if RUN_NETNS.match(n)}


def qemu_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "qemu-system-x86"], capture_output=True, text=True).stdout
    out2 = subprocess.run(["pgrep", "-f", "^qemu-system-x86_64"], capture_output=True, text=True).stdout
    return {int(p) for p in (out + out2).split()}


def wancopy_pids() -> set[int]:
    """wancopy's ends and the qemu-nbd each starts (``storage.wancopy``)."""
    out = subprocess.run(["pgrep", "-f", "--", "-m wanmig.storage.wancopy |^qemu-nbd "],
                         capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def daemon_pids() -> set[int]:
    """The network modes' servers and tunnels (BIRD, Knot DNS, OpenVPN)."""
    out = subprocess.run(["pgrep", "-x", "bird|knotd|openvpn"], capture_output=True,
                         text=True).stdout
    return {int(p) for p in out.split()}


def interface_names() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.fixture
def leaves_nothing_behind():
    """Fails the test if it left a run namespace, a QEMU, a wancopy, a network mode's
    server or an interface behind."""
    before = (run_netns_names(), qemu_pids(), interface_names(), wancopy_pids(), daemon_pids())
    yield
    after = (run_netns_names(), qemu_pids(), interface_names(), wancopy_pids(), daemon_pids())
    assert after[4] <= before[4], f"servers left: {after[4] - before[4]}"
    assert after[3] <= before[3], f"wancopy processes left: {after[3] - before[3]}"
    assert after[0] <= before[0], f"namespaces left: {after[0] - before[0]}"
    assert after[1] <= before[1], f"QEMU processes left: {after[1] - before[1]}"
    assert after[2] <= before[2], f"interfaces left: {after[2] - before[2]}"
    shm = Path("/dev/shm/wanmig")
    left = [p.name for p in shm.iterdir()] if shm.is_dir() else []
    assert not left, f"guest RAM files left in {shm}: {left}"
