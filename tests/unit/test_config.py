"""Scenario validation: bad values are refused with the field named."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from wanmig.cli import app
from wanmig.config import load_scenario, parse_scenario
from wanmig.errors import ConfigError
from wanmig.parts import NETWORK, PartInfo


def test_defaults_are_the_demo() -> None:
    sc = parse_scenario({})
    assert sc.memory.strategy == "precopy"
    assert sc.network.mode == "l2-extend"
    assert sc.vm.ram_mib == 256
    # the probe's interval follows the accelerator unless the scenario sets one
    assert sc.probe.interval_ms is None
    assert (sc.probe.interval_for("kvm"), sc.probe.interval_for("tcg")) == (1.0, 5.0)
    assert parse_scenario({"probe": {"interval_ms": 2.0}}).probe.interval_for("tcg") == 2.0


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


def test_unimplemented_mode_is_refused_not_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    # every mode of the table is built now: one the project names but has not built
    later = PartInfo("teleport", "a mode named, not built")
    monkeypatch.setitem(NETWORK._entries, later.name, later)
    with pytest.raises(ConfigError, match="'teleport' is not implemented yet"):
        parse_scenario({"network": {"mode": "teleport"}})
    with pytest.raises(ConfigError, match="unknown network mode 'warp'"):
        parse_scenario({"network": {"mode": "warp"}})


@pytest.mark.parametrize("strategy", ["precopy", "precopy-tuned", "postcopy", "hybrid", "auto"])
def test_every_memory_strategy_is_accepted(strategy: str) -> None:
    assert parse_scenario({"memory": {"strategy": strategy}}).memory.strategy == strategy


def test_dirty_working_set_must_fit_the_guest() -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario({"vm": {"ram_mib": 256, "workload": "dirty", "dirty_mib": 200}})
    assert info.value.field == "vm" and "at most half" in str(info.value)


@pytest.mark.parametrize("data, words", [
    ({"vm": {"base": "debian", "disk_mib": 256}}, "disk_mib >= 512"),
    ({"vm": {"root": "debian"}}, 'needs base = "debian"'),
    ({"vm": {"workload": "app", "base": "debian", "disk_mib": 1024}}, 'needs root = "debian"'),
    ({"vm": {"disk_mib": 64, "disk_write_mbps": 5, "disk_write_mib": 40}}, "at most half"),
    ({"storage": {"strategy": "shared"}, "fault": {"link_down_phase": "storage",
                                                     "link_down_s": 5}}, "copies"),
    ({"memory": {"strategy": "precopy-tuned"}, "fault": {"link_down_phase": "postcopy",
                                                           "link_down_s": 5}}, "may switch"),
    # wancopy moves frozen images only: never silently QEMU's NBD instead
    ({"storage": {"strategy": "precopy", "transport": "wancopy"}}, "not implemented for precopy"),
    ({"storage": {"strategy": "auto", "transport": "wancopy"}}, "not implemented for auto"),
    ({"storage": {"strategy": "hybrid", "transport": "scp"}}, "transport"),
    ({"storage": {"strategy": "hybrid", "streams": 17}}, "streams"),
])
def test_disk_settings_that_cannot_work_are_refused(data: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_scenario(data)


def test_local_disk_settings_are_accepted() -> None:
    sc = parse_scenario({"vm": {"base": "debian", "disk_mib": 2048, "disk_write_mbps": 5},
                         "storage": {"strategy": "precopy", "verify": True},
                         "fault": {"link_down_phase": "storage", "link_down_s": 10}})
    assert sc.storage.timeout_s == 1800 and not sc.storage.synchronous_writes
    app = parse_scenario({"vm": {"base": "debian", "root": "debian", "disk_mib": 1024,
                                 "workload": "app"}})
    assert app.vm.root == "debian" and app.vm.workload == "app"
    own = parse_scenario({"storage": {"strategy": "postcopy", "transport": "wancopy"}})
    assert (own.storage.transport, own.storage.streams, own.storage.compress_level) == (
        "wancopy", 0, 1)
    # by default wancopy carries postcopy's and hybrid's frozen images (also as auto's
    # choice), QEMU's NBD the rest
    auto = parse_scenario({"storage": {"strategy": "auto"}}).storage
    assert auto.transport == "auto"
    assert [s for s in ("mirror", "precopy", "postcopy", "hybrid", "shared")
            if auto.wancopy_for(s)] == ["postcopy", "hybrid"]
    qemu = parse_scenario({"storage": {"strategy": "hybrid", "transport": "qemu"}}).storage
    assert not qemu.wancopy_for("hybrid")


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
    profile = wan.link
    assert wan.profile == "continental" and profile is not None
    assert profile.rtt_ms == 50 and profile.rate_mbit == 100
    # the client's site is a nearby one, behind emulated links of its own
    assert wan.client_link is not None and wan.client_link.name == "metro"
    assert parse_scenario({"wan": {"client_profile": "none"}}).wan.client_link is None


def test_wan_overrides_and_none() -> None:
    wan = parse_scenario({"wan": {"profile": "continental", "rtt_ms": 20, "loss_pct": 1}}).wan
    profile = wan.link
    assert profile is not None and (profile.rtt_ms, profile.loss_pct) == (20, 1)
    assert parse_scenario({"wan": {"profile": "none"}}).wan.link is None


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


# -- input that must be refused in one line, before anything starts ----------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from tests.conftest import RUN_NETNS, run_netns_names  # noqa: E402
from wanmig import registry  # noqa: E402

LONG_NAME = "x" * 300


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "a\x00b", ".hidden", "", " x",
                                  "x\n", LONG_NAME])
def test_name_must_be_a_file_name_component(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario({"name": name})
    assert info.value.field == "name"
    assert "\n" not in str(info.value) and len(str(info.value)) < 120  # not quoted back whole


@pytest.mark.parametrize("name", ["demo", "auto-dirty", "run_2.b", "A1", "x" * 64])
def test_plain_names_are_accepted(name: str) -> None:
    assert parse_scenario({"name": name}).name == name


@pytest.mark.parametrize("data, field", [
    ({"memory": {"tls": "no"}}, "memory.tls"),       # lax pydantic would read False
    ({"memory": {"tls": 0}}, "memory.tls"),
    ({"vm": {"ram_mib": "512"}}, "vm.ram_mib"),
    ({"vm": {"ram_mib": 512.0}}, "vm.ram_mib"),
    ({"vm": {"accel": 1}}, "vm.accel"),
    ({"name": 7}, "name"),
    ({"vm": 3}, "vm"),
])
def test_values_must_have_their_type(data: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario(data)
    assert info.value.field == field and "\n" not in str(info.value)


def test_an_integer_is_still_a_float() -> None:
    assert parse_scenario({"vm": {"dirty_rate_mbps": 20}}).vm.dirty_rate_mbps == 20.0


def test_unreadable_scenario_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_scenario(tmp_path)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('name = "demo"\n[vm]\nworkload = "\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(line 3\)"):
        load_scenario(latin1)


def test_a_section_that_is_not_a_table(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text("vm = 3\n")
    for overrides in (None, {"vm": {"workload": "web"}}):
        with pytest.raises(ConfigError) as info:
            load_scenario(f, overrides=overrides)
        assert info.value.field == "vm" and "must be a table ([vm]), got 3" in str(info.value)


# One subprocess per case: the installed command, as a user runs it.
WANMIG = Path(sys.executable).parent / "wanmig"
SHIPPED_DEMO = Path(__file__).resolve().parents[2] / "scenarios" / "demo.toml"


def _case_files(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Case id -> (arguments, text the one stderr line must contain)."""
    def scenario(name: str, content: str | bytes) -> str:
        f = tmp_path / f"{name}.toml"
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(f)

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    mig = ["migrate", "--scenario"]
    return {
        "name-traversal": (mig + [scenario("trav", 'name = "../../x"\n')], "name:"),
        "name-absolute": (mig + [scenario("abs", 'name = "/tmp/evil"\n')], "name:"),
        "name-long": (mig + [scenario("long", f'name = "{LONG_NAME}"\n')],
                      "name: 300 characters long"),
        "name-nul": (mig + [scenario("nul", 'name = "a\\u0000b"\n')], "name:"),
        "directory": (mig + [str(tmp_path)], "is not a regular file"),
        "not-utf8": (mig + [scenario("latin1", 'name = "d\xe9mo"\n'.encode("latin-1"))],
                     "not UTF-8"),
        "non-table-plus-override": (mig + [scenario("vm3", "vm = 3\n"), "--workload", "web"],
                                    "vm: must be a table"),
        "strict-bool": (mig + [scenario("tls", '[memory]\ntls = "no"\n')], "memory.tls:"),
        "json-dir-uncreatable": (mig + [str(SHIPPED_DEMO), "--json",
                                        str(blocker / "sub" / "r.json")],
                                 "--json: cannot create"),
        "json-is-a-directory": (["demo", "--json", str(tmp_path)], "is a directory"),
    }


def _new_run_netns(before: set[str]) -> set[str]:
    """Run namespaces (``wm<run id>-<role>``) that appeared since ``before`` and that no
    run registered in the shared state dir: other tests on this machine make theirs
    meanwhile, each registered first; the CLI under test would have registered its
    own in the test's private ``WANMIG_STATE_DIR``."""
    assert all(RUN_NETNS.match(n) for n in before)
    return {n for n in run_netns_names() - before
            if not (registry.STATE_DIR / f"{n[2:8]}.json").exists()}


CLI_CASES = ["name-traversal", "name-absolute", "name-long", "name-nul", "directory",
             "not-utf8", "non-table-plus-override", "strict-bool", "json-dir-uncreatable",
             "json-is-a-directory"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_bad_input_in_one_line_before_starting(case: str, tmp_path: Path) -> None:
    cases = _case_files(tmp_path)
    assert sorted(cases) == sorted(CLI_CASES)
    args, says = cases[case]
    state = tmp_path / "state"  # the run registry: it must never be created
    env = {**os.environ, "WANMIG_STATE_DIR": str(state), "COLUMNS": "80"}
    before = run_netns_names()
    start = time.monotonic()
    proc = subprocess.run([str(WANMIG), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == ""  # no step, no phase: nothing started
    assert not state.exists() and not (tmp_path / "results").exists()
    assert _new_run_netns(before) == set()
    assert elapsed < 10, f"took {elapsed:.1f} s: something was started"


def test_cli_refuses_an_old_qemu_in_one_line(tmp_path: Path) -> None:
    """A QEMU below 10.0 (here a stand-in that only answers ``--version`` as Debian 12's
    7.2 does) is refused before anything starts, saying how to get 10.0."""
    old = tmp_path / "qemu-system-x86_64"
    old.write_text("#!/bin/sh\necho 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)'\n")
    old.chmod(0o755)
    state = tmp_path / "state"
    env = {**os.environ, "WANMIG_STATE_DIR": str(state), "WANMIG_QEMU": str(old),
           "COLUMNS": "200"}
    env.pop("WANMIG_ALLOW_OLD_QEMU", None)
    proc = subprocess.run([str(WANMIG), "migrate", "--scenario", str(SHIPPED_DEMO)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "QEMU 7.2.22" in lines[0] and "10.0 or newer" in lines[0]
    assert "bookworm-backports" in lines[0]
    assert proc.stdout == "" and not state.exists()



def test_a_json_scenario_is_read_as_json(tmp_path: Path) -> None:
    good = tmp_path / "s.json"
    good.write_text('{"name": "j", "memory": {"strategy": "postcopy"}}')
    assert load_scenario(good).memory.strategy == "postcopy"
    for text, message in (('{"name": ', "not valid JSON"), ("[1, 2]", "a JSON object")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_scenario(bad)
