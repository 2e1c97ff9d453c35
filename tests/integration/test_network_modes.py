"""Each network mode end to end: a real guest migrated from A to B over the emulated
WAN while the client, at a third site behind links of its own, keeps using it.

``route`` runs real BIRD daemons on the three routers: the VM's /32 must reach the
client's kernel by BGP, via B.  ``mobile-ip`` tunnels from A's router (the home agent)
to B's hypervisor.  Every mode must keep the client's long-lived TCP
connection, lose none of the guest's durable writes and leave nothing behind (the
fixture also looks for BIRD processes).
"""

from __future__ import annotations

import dataclasses

import pytest

from wanmig.config import parse_scenario
from wanmig.network import route
from wanmig.network.bird import BirdConfig
from wanmig.orchestrator import Orchestrator
from wanmig.testbed.topology import Addressing

pytestmark = [pytest.mark.root, pytest.mark.qemu]


@pytest.mark.parametrize("mode", ["l2-extend", "route", "mobile-ip"])
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
    """B's BIRD expects the client's site under a wrong AS number: that session never
    comes up, and the run must end before anything moved, the VM still at A."""
    configs = route.bird_configs

    def wrong_peer(addr: Addressing) -> dict[str, BirdConfig]:
        out = configs(addr)
        b = out["b"]
        peers = tuple(dataclasses.replace(p, asn=64999) if p.name == "to_c" else p
                      for p in b.peers)
        return {**out, "b": dataclasses.replace(b, peers=peers)}

    monkeypatch.setattr(route, "bird_configs", wrong_peer)
    monkeypatch.setattr(route, "SESSION_TIMEOUT_S", 4.0)
    scenario = parse_scenario({"name": "mode-route-broken", "vm": {"ram_mib": 256},
                               "network": {"mode": "route"}})
    rec = await Orchestrator(scenario).run()

    assert rec.status == "rolled_back", rec.error
    assert rec.error and "BGP sessions not up" in rec.error and "rb.to_c" in rec.error
    assert [p.name for p in rec.phases][-1] == "prepare"      # nothing was copied
    assert rec.model_extra and rec.model_extra["source_state_after_rollback"] == "running"
    assert rec.network.new_conn_ms is not None and rec.network.tcp_survived is True
