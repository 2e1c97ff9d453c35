"""The two-site testbed on real namespaces, and cleaning up after a crash."""

from __future__ import annotations

import subprocess

import pytest

from wanmig.registry import STATE_DIR, Registry, clean_leftovers, new_run_id
from wanmig.testbed import Testbed

from ..conftest import interface_names, netns_names

pytestmark = pytest.mark.root


async def test_sites_are_joined_and_removed() -> None:
    before_ns, before_if = netns_names(), interface_names()
    registry = Registry(new_run_id())
    async with Testbed(registry) as tb:
        assert {ns.name for ns in tb.namespaces} <= netns_names()
        # The inter-site link carries IP between the sites ...
        out = await tb.site_a.run("python3", "-c", _UDP_ROUNDTRIP, tb.addr.site_b_ip,
                                  tb.site_b.name)
        assert out.strip() == "ok"
        # ... and both bridges hold the VM tap and the VXLAN port.
        for site in (tb.site_a, tb.site_b):
            links = await site.run("ip", "-o", "link", "show", "master", "br0")
            assert "tap0" in links and "vx0" in links
        vx = await tb.site_b.run("ip", "-d", "link", "show", "vx0")
        assert "vxlan id 77" in vx and f"remote {tb.addr.site_a_ip}" in vx
        assert "mtu 1600" in await tb.site_a.run("ip", "link", "show", "isl0")
    registry.close()
    assert netns_names() == before_ns
    assert interface_names() <= before_if
    assert not registry.path.exists()


async def test_clean_removes_what_a_crashed_run_left() -> None:
    registry = Registry(new_run_id())
    tb = Testbed(registry)
    await tb.up()
    sleeper = subprocess.Popen(["ip", "netns", "exec", tb.site_a.name, "sleep", "300",
                                str(registry.run_dir)])
    # Pretend the owner died: point the record at a PID that cannot be alive.
    registry.owner_pid = 2**22 + 1
    registry.add_pid(sleeper.pid)

    removed = clean_leftovers()

    assert f"process {sleeper.pid}" in removed
    assert sleeper.wait(timeout=10) is not None
    assert not ({ns.name for ns in tb.namespaces} & netns_names())
    assert not registry.path.exists() and not (STATE_DIR / registry.run_id).exists()


def test_clean_leaves_live_runs_alone() -> None:
    registry = Registry(new_run_id())  # owned by this (live) test process
    try:
        assert f"run {registry.run_id}" not in clean_leftovers()
        assert registry.path.exists()
    finally:
        registry.close()


# Sends one datagram from site A to a listener in site B and reads the echo.
_UDP_ROUNDTRIP = r"""
import socket, subprocess, sys
ip, ns_b = sys.argv[1], sys.argv[2]
srv = subprocess.Popen(["ip", "netns", "exec", ns_b, "python3", "-c",
    "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999));"
    "print('up', flush=True); d,a=s.recvfrom(100); s.sendto(d,a)"], stdout=subprocess.PIPE)
srv.stdout.readline()
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(5)
c.sendto(b"ok", (ip, 9999)); print(c.recvfrom(100)[0].decode())
srv.wait(5)
"""
