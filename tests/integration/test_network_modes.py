"""Each network mode end to end: a real guest migrated from A to B over the emulated
WAN while the client, at a third site behind links of its own, keeps using it.

``route`` runs real BIRD daemons on the three routers: the VM's /32 must reach the
client's kernel by BGP, via B.  Every mode must keep the client's long-lived TCP
connection, lose none of the guest's durable writes and leave nothing behind (the
fixture also looks for BIRD processes).
"""

from __future__ import annotations

import pytest

from wanmig.config import parse_scenario
from wanmig.orchestrator import Orchestrator
from wanmig.testbed.topology import Addressing

pytestmark = [pytest.mark.root, pytest.mark.qemu]


@pytest.mark.parametrize("mode", ["l2-extend", "route"])
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
    else:
        # BGP moved the /32: the client's kernel sends to B's router over its own link
        assert net.client_route is not None
        assert f"via {addr.link_ip('b', 'c')} dev rb0" in net.client_route, net.client_route
        assert net.route_switch_ms is not None and net.route_switch_ms < 5000
        assert net.rtt_after_ms < net.rtt_before_ms + 20, (net.rtt_before_ms, net.rtt_after_ms)
        assert rec.switchover_timeline and "route_announced" in rec.switchover_timeline
