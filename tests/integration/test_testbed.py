"""The two-site testbed on real namespaces, and cleaning up after a crash."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from wanmig.registry import STATE_DIR, Registry, clean_leftovers, new_run_id
from wanmig.testbed import Testbed
from wanmig.testbed.netns import Namespace

from ..conftest import interface_names, run_netns_names

pytestmark = pytest.mark.root


async def test_sites_are_joined_and_removed() -> None:
    before_ns, before_if = run_netns_names(), interface_names()
    registry = Registry(new_run_id())
    async with Testbed(registry) as tb:
        a = tb.addr
        assert {ns.name for ns in tb.namespaces} <= run_netns_names()
        # The hypervisors reach each other through both routers ...
        assert await _udp_roundtrip(tb.site_a, a.site_b_ip, tb.site_b) == "ok"
        # ... the client reaches each site's LAN over its own link ...
        for which in ("a", "b"):
            assert await _udp_roundtrip(tb.client, a.gateway(which), tb.router(which)) == "ok"
        route = await tb.client.run("ip", "route", "get", a.vm_ip)
        assert f"via {a.link_ip('a', 'c')} dev ra0 src {a.client_ip}" in route
        # ... both bridges hold the VM's tap and the LAN, the underlay carries a tunnel's
        # full frames (l2-extend stretches the subnet: tests/integration/test_tunnel.py)
        for site in (tb.site_a, tb.site_b):
            links = await site.run("ip", "-o", "link", "show", "master", "br0")
            assert "tap0" in links and "rt0" in links and "l2x0" not in links
        assert "mtu 1600" in await tb.site_a.run("ip", "link", "show", "up0")
    registry.close()
    assert run_netns_names() == before_ns
    assert interface_names() <= before_if
    assert not registry.path.exists()


async def _udp_roundtrip(src: Namespace, ip: str, dst: Namespace) -> str:
    """One datagram from ``src`` to a listener on ``ip`` in ``dst``, and its echo."""
    return (await src.run("python3", "-c", _UDP_ROUNDTRIP, ip, dst.name)).strip()


async def test_clean_removes_what_a_crashed_run_left() -> None:
    registry = Registry(new_run_id())
    tb = Testbed(registry)
    await tb.up()
    # a process that names the run on its command line and keeps running (sleep
    # would refuse the extra argument and exit at once)
    sleeper = subprocess.Popen(["ip", "netns", "exec", tb.site_a.name, "python3", "-c",
                                "import time; time.sleep(300)", str(registry.run_dir)])
    # Pretend the owner died: point the record at a PID that cannot be alive.
    registry.owner_pid = 2**22 + 1
    registry.add_pid(sleeper.pid)
    # clean only kills a process whose command line names the run: wait for the exec
    # of python ("ip netns exec" names the run too, a moment before it execs)
    cmdline = Path(f"/proc/{sleeper.pid}/cmdline")
    for _ in range(500):
        if cmdline.read_bytes().startswith(b"python3\0"):
            break
        time.sleep(0.01)
    assert str(registry.run_dir).encode() in cmdline.read_bytes()

    removed = clean_leftovers()

    assert f"process {sleeper.pid}" in removed
    assert sleeper.wait(timeout=10) is not None
    assert not ({ns.name for ns in tb.namespaces} & run_netns_names())
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


async def test_sites_joined_by_an_emulated_wan() -> None:
    from wanmig.wan import measure
    from wanmig.wan.profiles import resolve_profile

    before_ns = run_netns_names()
    registry = Registry(new_run_id())
    profile = resolve_profile({"profile": "continental", "rtt_ms": 30})
    async with Testbed(registry, wan=profile, client_wan=resolve_profile("metro")) as tb:
        assert tb.middle is not None and tb.middle.name in run_netns_names()
        assert tb.wan is not None and tb.wan.describe()["rtt_ms"] == 30
        # The migration path between the sites sees the emulated RTT ...
        rtt = await measure.rtt(tb.site_a.name, tb.site_b.name, tb.addr.site_b_ip,
                                rate_hz=100, seconds=1.0)
        assert rtt.p50_ms is not None and 24 <= rtt.p50_ms <= 36
        # ... and the client's site has a link of its own to each site.
        assert {w: link.describe()["profile"] for w, link in tb.client_wans.items()} == \
            {"a": "metro", "b": "metro"}
    registry.close()
    assert run_netns_names() == before_ns
