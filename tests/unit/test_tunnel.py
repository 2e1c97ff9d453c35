"""The tunnel's OpenVPN configuration, and ``wanmig bench tunnel`` judged from documents."""

from __future__ import annotations

from pathlib import Path

from wanmig.bench.runner import summarise
from wanmig.bench.tunnel import FIGURES, evaluate_checks
from wanmig.config import parse_scenario
from wanmig.network.tunnel import render_openvpn


def test_each_end_binds_its_address_and_requires_the_other_by_name() -> None:
    server = render_openvpn(role="server", ifname="l2x0", local="172.16.1.2",
                            remote="172.16.2.2", creds_dir=Path("/run/x/l2x-server"),
                            peer_name="wanmig-l2x-client-abc", log=Path("/run/x/s.log"))
    lines = server.splitlines()
    for line in ("dev-type tap", "local 172.16.1.2", "remote 172.16.2.2 1194", "tls-server",
                 "dh none", "remote-cert-tls client",
                 "verify-x509-name wanmig-l2x-client-abc name", "tls-version-min 1.2",
                 "ca /run/x/l2x-server/ca-cert.pem", "cert /run/x/l2x-server/server-cert.pem",
                 "key /run/x/l2x-server/server-key.pem", "tun-mtu 1500", "mssfix 0"):
        assert line in lines, line
    assert any(l.startswith("data-ciphers AES-256-GCM") for l in lines)
    assert not any(l.startswith(("cipher none", "auth none", "comp", "ifconfig"))
                   for l in lines)
    client = render_openvpn(role="client", ifname="mip0", local="172.16.2.2",
                            remote="172.30.1.1", creds_dir=Path("/c"), peer_name="srv",
                            log=Path("/c.log")).splitlines()
    assert "tls-client" in client and "remote-cert-tls server" in client
    assert "dh none" not in client and "cert /c/client-cert.pem" in client


def test_encryption_is_on_unless_the_scenario_turns_it_off() -> None:
    assert parse_scenario({}).network.encrypt is True
    assert parse_scenario({"network": {"encrypt": False}}).network.encrypt is False


def _doc(vxlan: list[float], openvpn: list[float]) -> list[dict]:
    return [{"goodput_mbit": g, "tunnel_cpu_pct": None, "setup_ms": 40.0,
             "bench": {"case": "vxlan"}} for g in vxlan] + [
            {"goodput_mbit": g, "tunnel_cpu_pct": 30.0, "setup_ms": 1200.0,
             "bench": {"case": "openvpn"}} for g in openvpn]


def test_the_cost_check_reads_the_medians_of_both_tunnels() -> None:
    held = evaluate_checks(summarise(_doc([90, 92, 91], [85, 88, 84]), FIGURES))[0]
    assert held["ok"] is True and "encryption costs 6.6%" in held["detail"]
    missed = evaluate_checks(summarise(_doc([90, 92, 91], [70, 88, 75]), FIGURES))[0]
    assert missed["ok"] is False and missed["limit"]["case"] == "openvpn"
    assert evaluate_checks(summarise(_doc([], [80]), FIGURES))[0]["ok"] is None


def test_insecure_turns_off_tls_and_tunnel_encryption_together() -> None:
    from wanmig.cli import _overrides
    assert _overrides(None, None, None, True, network="route") == {
        "memory": {"tls": False}, "network": {"mode": "route", "encrypt": False}}
    assert "network" not in _overrides(None, None, None, False)
