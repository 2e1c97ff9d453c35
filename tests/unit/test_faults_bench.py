"""The fault campaign planned and judged from documents alone (its runs are real
migrations: ``wanmig bench faults``)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from wanmig.bench.faults import FIGURES, evaluate_checks, expected_end, plan_cases, verdict
from wanmig.bench.runner import summarise
from wanmig.config import parse_scenario
from wanmig.errors import ConfigError
from wanmig.report import render_bench


def test_the_campaign_covers_every_phase_duration_strategy_and_mode() -> None:
    cases = plan_cases()
    names = [c.name for c in cases]
    for seconds in (2, 10, 30):
        for case in ("precopy/memory", "precopy/switchover", "postcopy/postcopy",
                     "storage-mirror-sync/storage", "storage-precopy/storage",
                     "storage-hybrid/storage", "storage-postcopy/storage"):
            assert f"link/{case}/{seconds}s" in names
    assert {n for n in names if n.startswith("link/network-")} == {
        f"link/network-{m}/switchover/10s" for m in ("l2-extend", "dns-tunnel", "mobile-ip",
                                                       "route")}
    assert [n for n in names if n.startswith("kill-destination/")] == [
        f"kill-destination/{p}" for p in ("memory", "pre-switchover", "after-resume",
                                          "postcopy")]
    points = ("memory", "pre-switchover", "switchover", "after-resume", "postcopy")
    assert [n for n in names if n.startswith("kill-source/")] == [
        f"kill-source/{p}" for p in points]
    assert [n for n in names if n.startswith("kill-controller/")] == [
        f"kill-controller/{p}" for p in ("storage", *points)]
    for qemu in ("source", "destination"):
        assert [n for n in names if n.startswith(f"hang-{qemu}/")] == [
            f"hang-{qemu}/{p}/10s" for p in points]
    assert {n for n in names if expected_end(n) == "lost"} == {
        "kill-destination/after-resume", "kill-destination/postcopy", "kill-source/memory",
        "kill-source/pre-switchover", "kill-source/switchover", "kill-source/postcopy"}
    storage = [c for c in cases if c.name.startswith("link/storage-")]
    assert storage and all(c.scenario()["storage"]["verify"] for c in storage)
    for case in cases:   # every scenario valid as it stands
        parse_scenario(case.scenario())
    assert [c.name for c in plan_cases(["link/postcopy"])] == [
        "link/postcopy/postcopy/2s", "link/postcopy/postcopy/10s", "link/postcopy/postcopy/30s"]
    with pytest.raises(ConfigError, match="no fault case"):
        plan_cases(["sigstop/"])


def entry(case: str, status: str, *, vm_lost: bool = False, both: float = 0.0,
          gaps: int = 0, left: list[str] | None = None,
          disk_match: bool | None = None) -> dict[str, Any]:
    e = {"status": status, "vm_lost": vm_lost or None, "total_ms": 9000.0,
         "network": {"client_outage_ms": 500.0},
         "integrity": {"both_running_ms": both, "guest_log_gaps": gaps,
                       "guest_log_out_of_order": 0, "disk_match": disk_match},
         "bench": {"case": case}}
    e["campaign"] = verdict(e, left or [], expected_end(case))
    return e


def checks_of(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in evaluate_checks(summarise(results, FIGURES))}


def test_a_clean_campaign_holds_every_target() -> None:
    results = [entry("link/postcopy/postcopy/10s", "completed"),
               entry("link/precopy/switchover/30s", "rolled_back"),
               entry("kill-destination/after-resume", "failed", vm_lost=True),
               entry("kill-source/after-resume", "completed", disk_match=True),
               entry("hang-destination/memory/10s", "rolled_back"),
               {**entry("kill-controller/memory", "rolled_back"),
                "recovery": {"stage": "copying", "status": "rolled_back", "took_ms": 812.0}}]
    checks = checks_of(results)
    assert all(c["ok"] for c in checks.values()), checks
    doc = {"kind": "faults", "results": results, "summary": summarise(results, FIGURES),
           "checks": list(checks.values())}
    console = Console(width=250, record=True)
    console.print(render_bench(doc))
    text = console.export_text()
    assert "link/postcopy/postcopy/10s" in text and "wanmig recover from copying" in text


def test_each_target_fails_on_its_own_fault() -> None:
    checks = checks_of([entry("link/postcopy/postcopy/10s", "failed", vm_lost=True),
                        entry("link/precopy/memory/2s", "completed", both=40.0, gaps=2,
                              left=["netns wmabc-a"])])
    failed = {name for name, c in checks.items() if c["ok"] is False}
    assert failed == {"every WAN outage ends completed or rolled back, 0 vm_lost",
                      "0 ms with two copies running across the campaign",
                      "0 lost log records across the campaign",
                      "0 leftovers across the campaign"}


def test_a_crash_that_should_lose_the_vm_but_claims_success_fails_its_check() -> None:
    """The rule's outcome is judged per case: a source killed mid-copy must end with the VM
    lost and said so; a controller's crash must be recovered with the VM kept."""
    checks = checks_of([entry("kill-source/memory", "rolled_back"),
                        entry("kill-controller/after-resume", "failed", vm_lost=True),
                        entry("hang-source/switchover/10s", "failed"),
                        entry("link/storage-precopy/storage/2s", "completed",
                              disk_match=False)])
    failed = {name for name, c in checks.items() if c["ok"] is False}
    assert failed == {"every crash ends as the rule says: vm_lost only where the only "
                      "complete copy died, and said so",
                      "every 10 s hang ends completed or rolled back, 0 vm_lost",
                      "0 disk mismatches across the campaign"}
    crash = checks["every crash ends as the rule says: vm_lost only where the only complete "
                   "copy died, and said so"]
    assert "0 of 2" in crash["detail"]
