"""The seed papers' bench and the demo's comparison, planned and rendered from documents
alone (the runs themselves are real migrations: ``make demo``, ``wanmig bench seeds``)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from wanmig.bench.runner import summarise
from wanmig.bench.seeds import FIGURES, PAPERS, comparisons, plan_cases
from wanmig.config import parse_scenario
from wanmig.demo import FIGURES as DEMO_FIGURES
from wanmig.demo import comparison
from wanmig.demo import plan_cases as demo_cases
from wanmig.errors import ConfigError
from wanmig.report import render_bench


def text(doc: dict[str, Any]) -> str:
    console = Console(width=250, record=True)
    console.print(render_bench(doc))
    return console.export_text()


def test_every_implemented_paper_runs_its_technique_and_wanmigs_best() -> None:
    cases = plan_cases()
    implemented = [p for p in PAPERS if p.implemented]
    assert [c.name for c in cases] == [f"{p.key}/{run}" for p in implemented
                                       for run in ("technique", "best")]
    assert {p.key for p in PAPERS if not p.implemented} == {"liu2009", "ramakrishnan2007"}
    for case in cases:   # every scenario is valid as it stands
        sc = parse_scenario(case.paper.run_scenario(case.run))
        if case.run == "best":
            assert (sc.memory.strategy, sc.network.mode) == ("auto", "route")
            assert sc.storage.strategy == ("auto" if case.paper.moves_disk else "shared")
        else:
            assert sc.memory.strategy == "precopy"
    tech = {c.paper.key: parse_scenario(c.paper.run_scenario("technique")) for c in cases}
    assert tech["travostino2006"].wan.link.rtt_ms == 200
    assert tech["bradford2007"].storage.strategy == "precopy"
    assert tech["bradford2007"].network.mode == "dns-tunnel"
    assert tech["li2008"].network.mode == "mobile-ip"
    assert tech["hirofuchi2009"].storage.strategy == "postcopy"
    assert tech["hirofuchi2009"].storage.transport == "qemu"
    assert tech["voorsluys2009"].vm.workload == "app"


def test_a_paper_without_its_technique_is_refused_not_substituted() -> None:
    with pytest.raises(ConfigError, match="liu2009: not implemented"):
        plan_cases(["liu2009"])
    with pytest.raises(ConfigError, match="unknown paper"):
        plan_cases(["nobody2010"])
    assert [c.name for c in plan_cases(["li2008"])] == ["li2008/technique", "li2008/best"]


def seeds_doc() -> dict[str, Any]:
    results = []
    for run, outage, total in (("technique", 900.0, 30_000.0), ("best", 300.0, 12_000.0)):
        results.append({"status": "completed", "total_ms": total, "wan_bytes": 10**8,
                        "network": {"client_outage_ms": outage},
                        "memory": {"decision": {"chosen": "precopy-tuned"}
                                   if run == "best" else None},
                        "bench": {"case": f"li2008/{run}", "paper": "li2008", "run": run}})
    summary = summarise(results, FIGURES)
    return {"kind": "seeds", "results": results, "summary": summary,
            "checks": comparisons(summary), "papers": [p.info() for p in PAPERS],
            "settings": {"repeat": 1}}


def test_the_seeds_table_shows_each_paper_and_what_ran() -> None:
    doc = seeds_doc()
    assert doc["checks"] == [{"check": "li2008: best against the technique", "ok": None,
                              "detail": "outage 0.33×, total 0.40×", "case": "li2008"}]
    out = text(doc)
    assert "< 4 s" in out and "outage 900 ms" in out and "outage 300 ms" in out
    assert "(auto ran precopy-tuned)" in out
    assert out.count("not implemented") == 2 and "not run" in out   # travostino et al.


def test_the_demo_compares_the_same_scenario_with_defaults_and_auto() -> None:
    plain = demo_cases({"name": "demo"})
    assert [(c.name, c.memory, c.storage) for c in plain] == [
        ("defaults", "precopy", None), ("auto", "auto", None)]
    disk = demo_cases({"name": "demo", "storage": {"strategy": "postcopy"}})
    assert [(c.memory, c.storage) for c in disk] == [("precopy", "mirror"),
                                                      ("auto", "postcopy")]
    sc = parse_scenario(disk[0].scenario({"name": "demo", "vm": {"ram_mib": 512},
                                          "storage": {"strategy": "postcopy"}}))
    assert (sc.memory.strategy, sc.storage.strategy, sc.vm.ram_mib) == ("precopy", "mirror", 512)
    results = [{"status": "completed", "total_ms": t, "wan_bytes": b,
                "memory": {"total_ms": m, "downtime_ms": 150},
                "network": {"client_outage_ms": o}, "bench": {"case": case}}
               for case, t, m, o, b in (("defaults", 10_000, 9_000, 500, 111e6),
                                        ("auto", 10_200, 4_500, 320, 52e6))]
    checks = comparison(summarise(results, DEMO_FIGURES))
    assert [c["detail"] for c in checks] == [
        "1.02× (10.20 s vs 10.00 s)", "0.50× (4.50 s vs 9.00 s)",
        "0.64× (320.00 ms vs 500.00 ms)", "0.47× (52.00 MB vs 111.00 MB)"]
    doc = {"kind": "demo", "results": results, "summary": summarise(results, DEMO_FIGURES),
           "checks": checks, "settings": {"ram_mib": 256, "workload": "idle"}}
    out = text(doc)
    assert "QEMU's defaults" in out and "wanmig auto" in out and "52.0 MB" in out
