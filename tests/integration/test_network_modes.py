"""Each network mode end to end: a real guest migrated from A to B over the emulated
WAN while the client, at a third site behind links of its own, keeps using it.

``route`` runs real BIRD daemons on the three routers: the VM's /32 must reach the
client's kernel by BGP, via B.  ``mobile-ip`` tunnels from A's router (the home agent)
to B's hypervisor.  ``dns-tunnel`` runs Knot DNS, which the client resolves the VM
through, and updates it with TSIG.  Every mode must keep the client's long-lived TCP
connection, lose none of the guest's durable writes and leave nothing behind (the
fixture also looks for BIRD processes).
"""

from __future__ import annotations

import dataclasses

import pytest

from wanmig.config import parse_scenario
from wanmig.errors import NetworkError
from wanmig.network import route
from wanmig.network.bird import BirdConfig
from wanmig.network.dns import KnotServer, TsigKey, lookup, update_address
from wanmig.orchestrator import Orchestrator
from wanmig.registry import Registry, new_run_id
from wanmig.testbed import Testbed
from wanmig.testbed.topology import Addressing

pytestmark = [pytest.mark.root, pytest.mark.qemu]


@pytest.mark.parametrize("mode", ["l2-extend", "route", "mobile-ip", "dns-tunnel"])
async def test_mode_keeps_the_client_connected(mode: str, leaves_nothing_behind) -> None:
    scenario = parse_scenario({
        "name": f"mode-{mode}", "vm": {"ram_mib": 256}, "network": {"mode": mode},
        "wan": {"profile": "continental", "client_profile": "metro"}})
    rec = await Orchestrator(scenario).run()

    assert rec.status == "completed", rec.error
    net = rec.network
    assert net.mode == mode
    assert net.tcp_survived is True and net.new_conn_ms is not None
    assert rec.integrity.guest_log_gaps == 0 and rec.integrity.ok
    # the client's own figures beyond the largest gap are in the record
    assert net.rtt_before_ms is not None and net.rtt_after_ms is not None
    assert net.udp_lost is not None and net.udp_lost_switchover is not None
    assert net.udp_lost_switchover <= net.udp_lost
    assert net.http_failed_1s is not None
    addr = Addressing()
    if mode == "l2-extend":
        # the stretched path: client -> router A -> VXLAN over the 50 ms WAN -> B
        assert net.rtt_after_ms > net.rtt_before_ms + 40, (net.rtt_before_ms, net.rtt_after_ms)
    elif mode == "dns-tunnel":
        # B's address, announced by a signed update; the client's resolver had it within
        # the TTL, and a new connection by name reached it there within the TTL + 1 s
        ttl_ms = net.dns_ttl_s * 1000
        assert net.dns_new_address == addr.vm_ip_at("b")
        assert net.dns_switch_ms is not None and 0 <= net.dns_switch_ms <= ttl_ms + 500
        assert net.new_conn_ms <= ttl_ms + 1000, net.new_conn_ms
    elif mode == "mobile-ip":
        # the home agent at A tunnels to B, the replies leave B directly: half the WAN's
        # 50 ms RTT is added to the client's metro RTT
        assert net.rtt_after_ms > net.rtt_before_ms + 20, (net.rtt_before_ms, net.rtt_after_ms)
        assert rec.switchover_timeline and "tunnel_on" in rec.switchover_timeline
    else:
        # BGP moved the /32: the client's kernel sends to B's router over its own link
        assert net.client_route is not None
        assert f"via {addr.link_ip('b', 'c')} dev rb0" in net.client_route, net.client_route
        assert net.route_switch_ms is not None and net.route_switch_ms < 5000
        assert net.rtt_after_ms < net.rtt_before_ms + 20, (net.rtt_before_ms, net.rtt_after_ms)
        assert rec.switchover_timeline and "route_announced" in rec.switchover_timeline


async def test_routing_daemons_that_do_not_peer_stop_the_run_before_the_move(
        monkeypatch: pytest.MonkeyPatch, leaves_nothing_behind) -> None:
    """B's BIRD signs its sessions with another TCP-MD5 secret than the run's (an impostor,
    or a misconfigured peer) and expects the client's site under a wrong AS number: its
    sessions never come up, and the run must end before anything moved, the VM still at A."""
    configs = route.bird_configs

    def wrong_peer(addr: Addressing, password: str | None = None) -> dict[str, BirdConfig]:
        out = configs(addr, password)
        b = out["b"]
        peers = tuple(dataclasses.replace(p, asn=64999) if p.name == "to_c" else p
                      for p in b.peers)
        return {**out, "b": dataclasses.replace(b, peers=peers, password="not-the-secret")}

    monkeypatch.setattr(route, "bird_configs", wrong_peer)
    monkeypatch.setattr(route, "SESSION_TIMEOUT_S", 4.0)
    scenario = parse_scenario({"name": "mode-route-broken", "vm": {"ram_mib": 256},
                               "network": {"mode": "route"}})
    rec = await Orchestrator(scenario).run()

    assert rec.status == "rolled_back", rec.error
    assert rec.error and "BGP sessions not up" in rec.error and "rb.to_c" in rec.error
    assert "rb.to_a" in rec.error   # the right AS, the wrong secret: refused too
    assert [p.name for p in rec.phases][-1] == "prepare"      # nothing was copied
    assert rec.model_extra and rec.model_extra["source_state_after_rollback"] == "running"
    assert rec.network.new_conn_ms is not None and rec.network.tcp_survived is True


async def test_dns_update_with_a_wrong_key_is_refused_and_changes_nothing(
        leaves_nothing_behind) -> None:
    registry = Registry(new_run_id())
    try:
        async with Testbed(registry) as tb:
            addr = tb.addr
            await tb.router_a.run("ip", "addr", "add", f"{addr.dns_ip()}/32", "dev", "lo")
            key = TsigKey.fresh()
            server = KnotServer(tb.router_a.name, registry.run_dir, addr.dns_ip(), addr.vm_ip,
                                300, key, registry)
            await server.start()
            try:
                # asked the way the client asks, from the client's site, over its link
                assert await lookup(tb.client.name, addr.dns_ip(), server.fqdn) == \
                    (addr.vm_ip, 300)
                for wrong in (TsigKey.fresh(), TsigKey("someone-else", key.secret)):
                    with pytest.raises(NetworkError, match="DNS update refused"):
                        await update_address(tb.site_b.name, addr.dns_ip(), wrong,
                                             addr.vm_ip_at("b"), 5)
                assert await lookup(tb.client.name, addr.dns_ip(), server.fqdn) == \
                    (addr.vm_ip, 300)
                await update_address(tb.site_b.name, addr.dns_ip(), key, addr.vm_ip_at("b"), 5)
                assert await lookup(tb.client.name, addr.dns_ip(), server.fqdn) == \
                    (addr.vm_ip_at("b"), 5)
            finally:
                await server.stop()
    finally:
        registry.close()
