"""The WAN link on real namespaces: RTT, rate, loss, down/up, tunnels, and nothing left.

The module builds its own three namespaces ``wmt-wan-<rand4>-{l,m,r}``::

    l: eth0 10.99.0.1/24 ── veth ── left [m] right ── veth ── eth0 10.99.0.2/24 :r

(MTU 1500, IPv6 off) with small servers in ``r`` (UDP echo, TCP sink, UDP
counter) and measures from ``l`` with short client runs, each its own process
inside the namespace.  A ``WanLink`` runs in ``m`` per test.  The path is
warmed up (ARP) before anything is measured.  Everything is removed at the
end, also when a test fails, and the teardown checks that it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from wanmig.errors import ConfigError, NetworkError
from wanmig.registry import Registry, new_run_id
from wanmig.wan import LinkProfile, WanLink, WanLinkState
from wanmig.wan.link import netem_available

from ..conftest import netns_names

pytestmark = pytest.mark.root

L_IP, R_IP = "10.99.0.1", "10.99.0.2"
VX_L_IP, VX_R_IP = "10.98.0.1", "10.98.0.2"

SERVER = r"""
import socket, sys, threading, time
def udp_echo():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 7000))
    while True:
        d, a = s.recvfrom(2048); s.sendto(d, a)
def tcp_sink():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # > 2 x BDP, before listen
    srv.bind(("0.0.0.0", 7001)); srv.listen()
    while True:
        c, _ = srv.accept()
        def run(c):
            n, t0 = 0, None
            while d := c.recv(1 << 20):
                t0 = t0 or time.monotonic(); n += len(d)
            c.sendall(f"{n} {time.monotonic() - (t0 or time.monotonic())}\n".encode()); c.close()
        threading.Thread(target=run, args=(c,), daemon=True).start()
def udp_count():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 7002))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    seen = 0
    while True:
        d, a = s.recvfrom(2048)
        if d == b"count?":  # idempotent: the query crosses the lossy link and is retried
            s.sendto(str(seen).encode(), a)
        elif d != b"reset":
            seen += 1
        else:
            seen = 0
for f in (udp_echo, tcp_sink, udp_count):
    threading.Thread(target=f, daemon=True).start()
print("up", flush=True)
sys.stdin.read()
"""

CLIENT = r"""
import json, socket, statistics, sys, time
mode, dst, *args = sys.argv[1:]
def echo(n, gap, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
    rtts = []
    for i in range(n):
        t = time.monotonic(); s.sendto(b"%d" % i, (dst, 7000))
        try:
            while s.recv(2048) != b"%d" % i:
                pass
            rtts.append((time.monotonic() - t) * 1e3)
        except socket.timeout:
            pass
        time.sleep(gap)
    return rtts
if mode == "echo":
    rtts = echo(int(args[0]), float(args[1]), float(args[2]))
    out = {"replies": len(rtts), "p50_ms": statistics.median(rtts) if rtts else None}
elif mode == "tcp":
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    c.settimeout(30); c.connect((dst, 7001)); data = b"\0" * (1 << 18)
    t = time.monotonic()
    while time.monotonic() - t < float(args[0]):
        c.sendall(data)
    c.shutdown(socket.SHUT_WR); n, secs = c.makefile().readline().split()
    out = {"goodput_mbit": int(n) * 8 / float(secs) / 1e6}
elif mode == "blast":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
    n, gap = int(args[0]), float(args[1])
    # Control datagrams cross the same lossy link as the data: send them repeatedly.
    for _ in range(5):
        s.sendto(b"reset", (dst, 7002))
    time.sleep(0.2)
    for i in range(n):
        s.sendto(b"x" * 100, (dst, 7002)); time.sleep(gap)
    time.sleep(0.3)
    for _ in range(10):
        s.sendto(b"count?", (dst, 7002))
        try:
            received = int(s.recv(100)); break
        except socket.timeout:
            pass
    else:
        raise SystemExit("no answer to count? after 10 tries")
    out = {"sent": n, "received": received}
print(json.dumps(out))
"""


@dataclass
class Sites:
    left: str
    middle: str
    right: str


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    tag = secrets.token_hex(2)
    s = Sites(f"wmt-wan-{tag}-l", f"wmt-wan-{tag}-m", f"wmt-wan-{tag}-r")
    made: list[str] = []
    server = None
    try:
        for ns in (s.left, s.middle, s.right):
            _sh("ip", "netns", "add", ns)
            made.append(ns)
            for key in ("all", "default"):  # no IPv6 chatter on the link
                _sh("ip", "netns", "exec", ns, "sysctl", "-qw",
                    f"net.ipv6.conf.{key}.disable_ipv6=1")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", s.left, "link", "add", "eth0", "mtu", "1500", "type", "veth",
            "peer", "name", "left", "mtu", "1500", "netns", s.middle)
        _sh("ip", "-n", s.right, "link", "add", "eth0", "mtu", "1500", "type", "veth",
            "peer", "name", "right", "mtu", "1500", "netns", s.middle)
        for ns, ip in ((s.left, L_IP), (s.right, R_IP)):
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        for ifname in ("left", "right"):
            _sh("ip", "-n", s.middle, "link", "set", ifname, "up")
        server = subprocess.Popen(["ip", "netns", "exec", s.right, sys.executable, "-c", SERVER],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        yield s
    finally:
        if server is not None:
            assert server.stdin is not None
            server.stdin.close()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)
    assert not set(made) & netns_names(), "namespaces left behind"


async def client(sites: Sites, mode: str, *args: object, dst: str = R_IP) -> dict:
    """Run one measurement from the left site; its JSON answer."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", sites.left, sys.executable, "-c", CLIENT, mode, dst,
        *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def warm_up(sites: Sites, dst: str = R_IP) -> None:
    """ARP across a delayed link costs an extra RTT: pay it before measuring."""
    assert (await client(sites, "echo", 5, 0.01, 2, dst=dst))["replies"] >= 4


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _root_qdiscs(ns: str) -> str:
    return subprocess.run(["tc", "-n", ns, "qdisc", "show"], capture_output=True,
                          text=True).stdout


def _assert_gone(link: WanLink, pid: int | None, registry: Registry, ns: str) -> None:
    assert link.state is WanLinkState.STOPPED and "stopped" in repr(link)
    assert pid is None or not _alive(pid)
    assert registry.pids == []
    assert "tbf" not in _root_qdiscs(ns)


async def test_rtt_and_goodput_follow_the_profile(sites: Sites) -> None:
    registry = Registry(new_run_id())
    link = WanLink(sites.middle, "left", "right", LinkProfile(rtt_ms=40, rate_mbit=50),
                   registry=registry, backend="forwarder")
    try:
        async with link:
            pid = link.pid
            assert link.state is WanLinkState.UP and "state=up" in repr(link)
            assert pid in registry.pids and link.backend == "forwarder"
            assert str(registry.run_dir) in open(f"/proc/{pid}/cmdline").read()
            assert _root_qdiscs(sites.middle).count("tbf") == 2
            await warm_up(sites)

            rtt = await client(sites, "echo", 40, 0.005, 1)
            assert rtt["replies"] >= 39
            assert 32 <= rtt["p50_ms"] <= 48, rtt

            tcp = await client(sites, "tcp", 3)
            assert 40 <= tcp["goodput_mbit"] <= 60, tcp

            stats = await link.stats()
            l2r, r2l = stats["left_to_right"], stats["right_to_left"]
            assert l2r["bytes"] > 3 * 40e6 / 8 * 0.9 and r2l["frames"] > 0
            assert stats["cpu_s"] > 0 and stats["backend"] == "forwarder"
            assert l2r["loss_drops"] == l2r["down_drops"] == 0
            assert {q["kind"] for q in stats["qdisc"]["right"]} == {"tbf"}
            assert link.describe() == {"profile": "custom", "backend": "forwarder",
                                       "rtt_ms": 40, "jitter_ms": 0, "loss_pct": 0,
                                       "rate_mbit": 50, "queue_ms": 20}
        assert link.final_stats is not None
        _assert_gone(link, pid, registry, sites.middle)
    finally:
        await link.stop()
        registry.close()


async def test_loss_set_live_then_down_and_up(sites: Sites) -> None:
    registry = Registry(new_run_id())
    link = WanLink(sites.middle, "left", "right", LinkProfile(rtt_ms=10), registry=registry)
    try:
        await link.start()
        pid = link.pid
        await warm_up(sites)

        await link.set_profile(LinkProfile(rtt_ms=10, loss_pct=10))
        blast = await client(sites, "blast", 2000, 0.0005)
        loss = 100 * (1 - blast["received"] / blast["sent"])
        assert 6 <= loss <= 14, blast  # binomial sd ~0.7 points at 2000 frames
        assert (await link.stats())["left_to_right"]["loss_drops"] >= 120

        await link.set_profile(LinkProfile(rtt_ms=10))
        await link.down()
        assert link.state is WanLinkState.DOWN and "state=down" in repr(link)
        assert (await client(sites, "echo", 20, 0.01, 0.1))["replies"] == 0
        assert (await link.stats())["left_to_right"]["down_drops"] >= 20

        await link.up()
        assert link.state is WanLinkState.UP
        echo = await client(sites, "echo", 20, 0.01, 1)
        assert echo["replies"] == 20 and 9 <= echo["p50_ms"] <= 13
        await link.stop()
        _assert_gone(link, pid, registry, sites.middle)
    finally:
        await link.stop()
        registry.close()


async def test_tcp_inside_vxlan_crosses_the_link(sites: Sites) -> None:
    """The testbed stretches L2 with VXLAN: its TCP super-frames must get through too."""
    for ns, local, remote, inner in ((sites.left, L_IP, R_IP, VX_L_IP),
                                     (sites.right, R_IP, L_IP, VX_R_IP)):
        _sh("ip", "-n", ns, "link", "add", "vx0", "mtu", "1400", "type", "vxlan", "id", "99",
            "local", local, "remote", remote, "dstport", "4789")
        _sh("ip", "-n", ns, "addr", "add", f"{inner}/24", "dev", "vx0")
        _sh("ip", "-n", ns, "link", "set", "vx0", "up")
    try:
        async with WanLink(sites.middle, "left", "right",
                           LinkProfile(rtt_ms=10, rate_mbit=50)) as link:
            await warm_up(sites, VX_R_IP)
            tcp = await client(sites, "tcp", 2, dst=VX_R_IP)
            stats = await link.stats()
        assert tcp["goodput_mbit"] >= 35, tcp
        assert stats["left_to_right"]["gso_cut"] > 0 and stats["left_to_right"]["tx_errors"] == 0
    finally:
        for ns in (sites.left, sites.right):
            subprocess.run(["ip", "-n", ns, "link", "del", "vx0"], capture_output=True)


async def test_netem_is_refused_where_the_kernel_lacks_it(sites: Sites) -> None:
    if await netem_available(sites.middle):
        pytest.skip("this kernel has sch_netem")
    link = WanLink(sites.middle, "left", "right", LinkProfile(rtt_ms=10, rate_mbit=50),
                   backend="netem")
    with pytest.raises(NetworkError, match="no sch_netem"):
        await link.start()
    assert link.state is WanLinkState.STOPPED and link.pid is None
    assert "tbf" not in _root_qdiscs(sites.middle) and "wmnp" not in subprocess.run(
        ["ip", "-n", sites.middle, "link"], capture_output=True, text=True).stdout
    with pytest.raises(ConfigError, match="wan.backend"):
        WanLink(sites.middle, "left", "right", LinkProfile(rtt_ms=1), backend="tc")


async def test_a_missing_interface_fails_cleanly(sites: Sites) -> None:
    registry = Registry(new_run_id())
    link = WanLink(sites.middle, "left", "nope", LinkProfile(rtt_ms=1, rate_mbit=10),
                   registry=registry)
    try:
        with pytest.raises(NetworkError, match="interface nope not found"):
            await link.start()
        _assert_gone(link, None, registry, sites.middle)
    finally:
        registry.close()
