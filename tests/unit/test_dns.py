"""The dns-tunnel mode's zone and Knot config, and the probe agent's name options (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wanmig.network.dns import VM_NAME, ZONE, TsigKey, render_config, render_zone
from wanmig.probe import agent_argv
from wanmig.probe.agent import parse_args


def test_zone_holds_the_vm_with_its_ttl() -> None:
    zone = render_zone(ZONE, "10.1.0.53", "10.1.0.10", 300)
    assert f"$ORIGIN {ZONE}" in zone
    assert f"{VM_NAME} 300 A 10.1.0.10" in zone.splitlines()
    assert "ns A 10.1.0.53" in zone.splitlines()


def test_config_allows_updates_only_with_the_key(tmp_path: Path) -> None:
    key = TsigKey.fresh()
    assert key.secret != TsigKey.fresh().secret            # a fresh secret per run
    conf = render_config(tmp_path, "10.1.0.53", ZONE, key)
    assert "listen: 10.1.0.53@53" in conf
    assert f"secret: {key.secret}" in conf and "algorithm: hmac-sha256" in conf
    # the zone's only ACL is the key's, for updates
    assert conf.count("acl:") == 2 and "action: update" in conf
    assert f"key: {key.name}" in conf and f"domain: {ZONE}" in conf


def test_probe_agent_resolves_by_name_only_with_a_server() -> None:
    argv = agent_argv("10.1.0.10", netns=None, udp_port=7, tcp_port=7, http_port=80,
                      interval_ms=5, python="python3", ready_timeout=30,
                      by_name=("vm.wanmig.test.", "10.1.0.53"))
    assert argv[argv.index("--name") + 1] == "vm.wanmig.test."
    assert argv[argv.index("--dns") + 1] == "10.1.0.53"
    args = parse_args(["--target", "10.1.0.10", "--name", "vm.wanmig.test.", "--dns",
                       "10.1.0.53"])
    assert (args.name, args.dns) == ("vm.wanmig.test.", "10.1.0.53")
    with pytest.raises(SystemExit):
        parse_args(["--target", "10.1.0.10", "--name", "vm.wanmig.test."])
