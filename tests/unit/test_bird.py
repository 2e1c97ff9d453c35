"""The route mode's BIRD configs and the parsing of BIRD's replies (pure)."""

from __future__ import annotations

from wanmig.network.bird import (
    HOST_ROUTE_PROTOCOL,
    BirdConfig,
    Peer,
    render_config,
    route_gateways,
    session_states,
)
from wanmig.network.route import ASN, bird_configs
from wanmig.testbed.topology import Addressing


def test_every_router_peers_with_the_two_other_sites_over_its_links() -> None:
    addr = Addressing()
    configs = bird_configs(addr)
    assert set(configs) == {"a", "b", "c"}
    for site, cfg in configs.items():
        assert cfg.asn == ASN[site]
        assert {p.name for p in cfg.peers} == {f"to_{o}" for o in "abc" if o != site}
        for p in cfg.peers:
            other = p.name[-1]
            # each end of a link names the other: the sessions match up
            assert (p.local_ip, p.ip) == (addr.link_ip(site, other), addr.link_ip(other, site))
            assert p.asn == ASN[other]
    assert configs["b"].host_routes == (f"{addr.vm_ip}/32",)      # only B announces the VM
    assert not configs["a"].host_routes and not configs["c"].host_routes
    assert configs["c"].prefsrc == addr.client_ip
    assert len({cfg.router_id for cfg in configs.values()}) == 3
    signed = bird_configs(addr, "s3cret")
    for cfg in signed.values():
        text = render_config(cfg)
        assert text.count('password "s3cret";') == 2 and text.count("strict bind yes;") == 2


def test_config_carries_only_host_routes_of_the_home_subnet() -> None:
    cfg = BirdConfig("172.30.0.2", 65002, (Peer("to_a", "172.30.0.2", "172.30.0.1", 65001),),
                     host_routes=("10.1.0.10/32",), host_prefix="10.1.0.0/24")
    text = render_config(cfg)
    assert "router id 172.30.0.2;" in text
    assert (f'protocol static {HOST_ROUTE_PROTOCOL} {{ disabled; ipv4; '
            f'route 10.1.0.10/32 via "lan0"; }}') in text
    assert "local 172.30.0.2 as 65002; neighbor 172.30.0.1 as 65001;" in text
    assert text.count("net ~ [ 10.1.0.0/24{32,32} ]") == 3   # kernel, BGP import, export
    assert "krt_prefsrc" not in text
    with_src = render_config(BirdConfig("172.30.1.2", 65003, (), prefsrc="10.3.0.100"))
    assert "krt_prefsrc = 10.3.0.100;" in with_src and HOST_ROUTE_PROTOCOL not in with_src


def test_session_states_and_gateways_from_replies() -> None:
    protocols = ["Name       Proto      Table      State  Since         Info",
                 "device1    Device     ---        up     05:50:01.123  ",
                 "to_b       BGP        ---        up     05:50:02.456  Established",
                 "to_c       BGP        ---        start  05:50:01.123  Active        "
                 "Socket: Connection refused", ""]
    assert session_states(protocols) == {
        "to_b": "Established", "to_c": "Active Socket: Connection refused"}
    route = ["Table master4:", "10.1.0.10/32         unicast [to_b 05:51:00.000] * (100) "
             "[AS65002i]", "\tvia 172.30.2.1 on rb0", ""]
    assert route_gateways(route) == ["172.30.2.1"]
    assert route_gateways(["Table master4:", ""]) == []
