"""End to end: a real guest migrated live between two namespace sites.

These boot the real guest under QEMU, build real namespaces, bridges and a
VXLAN, migrate over TCP between the sites and measure from the client
namespace.  Each also checks that nothing of the run is left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wanmig.config import parse_scenario
from wanmig.orchestrator import Orchestrator
from wanmig.record import PHASES, ResultRecord

from ..browser import open_page
from .client_checks import assert_client_losses_are_the_outage

pytestmark = [pytest.mark.root, pytest.mark.qemu]

WANMIG = Path(sys.executable).with_name("wanmig")


def test_demo_cli_migrates_twice_while_client_watches(tmp_path: Path,
                                                     leaves_nothing_behind) -> None:
    """``wanmig demo``: QEMU's defaults, then auto, side by side, and the HTML report."""
    out = tmp_path / "demo.json"
    proc = subprocess.run([str(WANMIG), "demo", "--json", str(out)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("status: completed") == 2
    assert "auto's client outage against QEMU's defaults" in proc.stdout
    assert f"HTML report: {out.with_suffix('.html')}" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["kind"] == "demo"
    defaults, auto = (ResultRecord.model_validate(r) for r in doc["results"])
    assert auto.status == "completed" and auto.scenario["memory"]["strategy"] == "auto"
    assert auto.memory.decision and auto.memory.decision["chosen"] == auto.memory.strategy
    for one in (defaults, auto):   # the plots' data, on the phases' clock
        series = one.series or {}
        assert {"udp_rtt", "http", "a_uplink_tx", "marks", "client_outage"} <= set(series)
        assert series["marks"]["A stopped"] < series["marks"]["B resumed"]
        assert one.wan_bytes and one.wan_bytes >= (one.memory.bytes or 0)
        assert one.integrity.both_running_ms == 0   # from QEMU's own STOP/RESUME events
    # every plot of both runs and of the comparison drawn in a real browser
    view = open_page(out.with_suffix(".html"))
    assert view.loaded and view.errors == []
    assert len(view.images) == 3 + 2 * 4 and all(i["complete"] and i["width"] > 100
                                                 for i in view.images), view.images
    _check_demo_record(defaults)


def _check_demo_record(rec: ResultRecord) -> None:
    """The defaults run: QEMU's precopy, the client's view, the switchover step by step."""

    assert rec.status == "completed" and rec.error is None
    # The demo runs over the continental WAN, and its RTT was measured, not copied.
    assert rec.wan.profile == "continental" and rec.wan.rtt_ms == 50
    assert rec.wan.backend in ("forwarder", "netem")
    assert rec.wan.rtt_measured_ms is not None and 40 <= rec.wan.rtt_measured_ms <= 60
    assert [p.name for p in rec.phases] == list(PHASES)
    starts = [p.start_ms for p in rec.phases]
    assert starts == sorted(starts) and all(p.end_ms >= p.start_ms for p in rec.phases)
    assert rec.memory.strategy == "precopy" and rec.memory.converged
    assert rec.memory.downtime_ms is not None and rec.memory.downtime_ms > 0
    assert rec.memory.bytes and rec.memory.bytes > 1 << 20

    # The client kept reaching the guest, and its figure is its own, not QEMU's.
    probe = rec.network.probe
    assert probe is not None
    assert_client_losses_are_the_outage(rec)
    assert rec.network.client_outage_ms is not None
    assert rec.network.client_outage_ms >= rec.memory.downtime_ms - 5
    assert rec.network.client_outage_ms < 10_000
    assert rec.network.tcp_survived is True
    assert probe["http_ok"] > 0
    assert rec.network.new_conn_ms is not None

    assert rec.integrity.guest_log_gaps == 0
    assert rec.integrity.guest_log_bad_checksums == 0
    assert rec.integrity.guest_log_records and rec.integrity.guest_log_records > 100

    # Where the outage went, step by step after the source's STOP, on one clock.
    tl = rec.switchover_timeline
    assert tl is not None
    steps = ["pre_switchover", "continue", "source_completed", "destination_loaded",
             "cont", "resume", "client_gap_end"]
    assert all(name in tl for name in steps), tl
    assert [tl[n] for n in steps] == sorted(tl[n] for n in steps)
    assert 0 <= tl["pre_switchover"] < tl["source_completed"]
    # QEMU's downtime and the client's gap, as the timeline places them
    assert abs((tl["source_completed"] - rec.memory.downtime_ms)) < 60
    gap = tl["client_gap_end"] - tl["client_gap_start"]
    assert abs(gap - rec.network.client_outage_ms) < 10
    # the last bytes cross the 50 ms link (one-way 25 ms) before B has loaded them
    assert tl["destination_loaded"] - tl["source_completed"] >= 20


@pytest.mark.parametrize("when", ["pre-switchover", "memory"])
async def test_destination_death_rolls_back(when: str, leaves_nothing_behind) -> None:
    scenario = parse_scenario({"name": f"rollback-{when}", "vm": {"ram_mib": 512},
                               "fault": {"kill_destination": when}})
    rec = await Orchestrator(scenario).run()

    assert rec.status == "rolled_back", rec.error
    assert rec.error
    names = [p.name for p in rec.phases]
    assert "switchover" not in names[:-1] and "redirect" not in names and "finish" not in names
    # The VM still runs and answers at site A: QEMU says so, and so does the client.
    assert rec.model_extra and rec.model_extra["source_state_after_rollback"] == "running"
    assert rec.network.new_conn_ms is not None, "a new connection after rollback failed"
    assert rec.network.tcp_survived is True
    assert rec.integrity.guest_log_gaps == 0
