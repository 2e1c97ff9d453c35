"""Scenario validation: bad values are refused with the field named."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from wanmig.cli import app
from wanmig.config import load_scenario, parse_scenario
from wanmig.errors import ConfigError


def test_defaults_are_the_demo() -> None:
    sc = parse_scenario({})
    assert sc.memory.strategy == "precopy"
    assert sc.network.mode == "l2-extend"
    assert sc.vm.ram_mib == 256


@pytest.mark.parametrize("data, field", [
    ({"vm": {"ram_mib": 8}}, "vm.ram_mib"),
    ({"vm": {"accel": "xen"}}, "vm.accel"),
    ({"memory": {"strategy": "teleport"}}, "memory.strategy"),
    ({"probe": {"interval_ms": -1}}, "probe.interval_ms"),
    ({"vm": {"ramm_mib": 512}}, "vm.ramm_mib"),
    ({"fault": {"kill_destination": "sometimes"}}, "fault.kill_destination"),
])
def test_bad_values_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario(data)
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")
    assert "\n" not in str(info.value)


def test_unimplemented_mode_is_refused_not_replaced() -> None:
    with pytest.raises(ConfigError, match="'dns-tunnel' is not implemented yet"):
        parse_scenario({"network": {"mode": "dns-tunnel"}})


@pytest.mark.parametrize("strategy", ["precopy", "precopy-tuned", "postcopy", "hybrid", "auto"])
def test_every_memory_strategy_is_accepted(strategy: str) -> None:
    assert parse_scenario({"memory": {"strategy": strategy}}).memory.strategy == strategy


def test_dirty_working_set_must_fit_the_guest() -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario({"vm": {"ram_mib": 256, "workload": "dirty", "dirty_mib": 200}})
    assert info.value.field == "vm" and "at most half" in str(info.value)


def test_cli_options_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[memory]\nstrategy = "precopy"\n[vm]\nworkload = "idle"\n')
    sc = load_scenario(f, overrides={"memory": {"strategy": "hybrid", "tls": False},
                                     "vm": {"workload": "web"}})
    assert (sc.memory.strategy, sc.memory.tls, sc.vm.workload) == ("hybrid", False, "web")


def test_cli_bad_scenario_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[vm]\nram_mib = "lots"\n')
    result = CliRunner().invoke(app, ["migrate", "--scenario", str(bad)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "vm.ram_mib" in lines[0]


def test_cli_missing_and_malformed_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["migrate", "--scenario", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "not found" in result.output
    broken = tmp_path / "broken.toml"
    broken.write_text("[vm\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(broken)


def test_shipped_scenarios_validate() -> None:
    root = Path(__file__).resolve().parents[2] / "scenarios"
    files = sorted(root.glob("*.toml"))
    assert files, "the repository ships example scenarios"
    for f in files:
        load_scenario(f)


def test_wan_defaults_to_continental() -> None:
    wan = parse_scenario({}).wan
    profile = wan.link_profile()
    assert wan.profile == "continental" and profile is not None
    assert profile.rtt_ms == 50 and profile.rate_mbit == 100
    assert wan.client_link_profile() is None


def test_wan_overrides_and_none() -> None:
    wan = parse_scenario({"wan": {"profile": "continental", "rtt_ms": 20, "loss_pct": 1}}).wan
    profile = wan.link_profile()
    assert profile is not None and (profile.rtt_ms, profile.loss_pct) == (20, 1)
    assert parse_scenario({"wan": {"profile": "none"}}).wan.link_profile() is None


@pytest.mark.parametrize("wan, field", [
    ({"profile": "moon"}, "wan"),
    ({"rtt_ms": -5}, "wan"),
    ({"loss_pct": 150}, "wan"),
    ({"rate_mbit": 0}, "wan"),
    ({"client_profile": "mars"}, "wan.client_profile"),
    ({"backend": "carrier-pigeon"}, "wan.backend"),
])
def test_bad_wan_values_refused(wan: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario({"wan": wan})
    assert info.value.field is not None and info.value.field.startswith(field)
    assert "\n" not in str(info.value)


def test_cli_unknown_wan_profile_exits_2() -> None:
    result = CliRunner().invoke(app, ["demo", "--wan", "moon"])
    assert result.exit_code == 2
    assert "moon" in result.output and "wan" in result.output
