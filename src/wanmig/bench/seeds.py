"""``wanmig bench seeds``: the seed papers' experiments, on this testbed, side by side.

Each paper (``PAPERS``) names its technique, the setting it reported and its headline
figure; where wanmig has the technique, the paper's experiment is set up here as
closely as this machine allows (``Paper.here`` says what differs) and run twice: with
the paper's technique (``technique``) and with wanmig's best (``best``: memory and
disk ``auto``, and the ``route`` network mode, which had the smallest median outage
and no path stretch in ``wanmig bench network``).  A paper whose technique wanmig does
not have is listed with why, and never run with a substitute.

The papers' figures are quoted as the project's design document and the papers'
abstracts give them; what we could not confirm from a source is said in the setting.
Each run is one full migration by the orchestrator (an ordinary result record,
labelled by the runner); the table is built from the document alone
(``report.seeds``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import parse_scenario
from ..errors import ConfigError
from .runner import RUN_FIGURES, BenchRun, Entry, Figures, Say, field_of

if TYPE_CHECKING:
    from ..orchestrator import Ui

DEFAULT_REPEAT = 1
RUNS = ("technique", "best")
#: wanmig's best, whatever the paper: both parts measure and choose, the VM's /32 by BGP.
BEST = {"memory": {"strategy": "auto"}, "network": {"mode": "route"}}
BEST_STORAGE = {"strategy": "auto"}
#: A Debian guest (real root filesystem on a 2 GiB disk, ``app``: nginx in front of Redis).
DEBIAN_VM = {"ram_mib": 256, "base": "debian", "disk_mib": 2048}


@dataclass(frozen=True)
class Paper:
    key: str
    citation: str
    technique: str
    setting: str            # the paper's, as far as our sources confirm it
    figure: str             # the paper's headline figure
    here: str = ""          # this testbed's setting, and what differs
    #: the technique's scenario (None: wanmig does not have the technique)
    scenario: dict[str, Any] | None = None
    missing: str = ""       # why it is not implemented
    compare: tuple[str, ...] = ("outage_ms", "total_ms")   # what the figure is about
    moves_disk: bool = False

    @property
    def implemented(self) -> bool:
        return self.scenario is not None

    def run_scenario(self, run: str) -> dict[str, Any]:
        """The scenario of one run: the technique's, or wanmig's best in its setting."""
        assert self.scenario is not None
        sc = json.loads(json.dumps(self.scenario))
        sc["name"] = f"seeds-{self.key}-{run}"
        if run == "best":
            for table, values in BEST.items():
                sc[table] = {**sc.get(table, {}), **values}
            if self.moves_disk:
                sc["storage"] = {**{k: v for k, v in sc.get("storage", {}).items()
                                    if k not in ("transport",)}, **BEST_STORAGE}
        return sc

    def info(self) -> dict[str, Any]:
        return {"paper": self.key, "citation": self.citation, "technique": self.technique,
                "setting": self.setting, "figure": self.figure, "here": self.here,
                "implemented": self.implemented, "missing": self.missing,
                "compare": list(self.compare)}


PAPERS: tuple[Paper, ...] = (
    Paper("travostino2006", "Travostino et al., FGCS 2006 (iGrid 2005 VM Turntable)",
          "precopy over a long fat lightpath; the VM's L2 segment extended over an IP tunnel",
          "Xen, Amsterdam to San Diego over a 1 Gbit/s lightpath, RTT about 1000× a LAN's",
          "0.8–1.6 s application downtime (abstract: 1–2 s)",
          "512 MiB busybox guest, RTT 200 ms, 500 Mbit/s (this emulator's reliable rate "
          "on 2 cores, not 1 Gbit/s), l2-extend (VXLAN), QEMU's default precopy",
          {"vm": {"ram_mib": 512}, "memory": {"strategy": "precopy"},
           "network": {"mode": "l2-extend"},
           "wan": {"profile": "intercontinental", "rtt_ms": 200, "rate_mbit": 500}}),
    Paper("bradford2007", "Bradford et al., VEE 2007",
          "disk precopy with write throttling; dynamic DNS and an IP tunnel for redirection",
          "Xen, a web server with its local disk, LAN and an emulated WAN (its rate and RTT "
          "not confirmed from our sources)",
          "3 s disruption on the LAN, 68 s on the WAN",
          "Debian guest (nginx + Redis, 10 requests/s) on a 2 GiB disk, continental "
          "(50 ms, 100 Mbit/s), storage precopy, dns-tunnel (Knot, TTL 5 s)",
          {"vm": {**DEBIAN_VM, "root": "debian", "workload": "app", "web_rps": 10},
           "memory": {"strategy": "precopy"}, "storage": {"strategy": "precopy"},
           "network": {"mode": "dns-tunnel"}, "wan": {"profile": "continental"}},
          compare=("outage_ms", "new_conn_ms", "total_ms"), moves_disk=True),
    Paper("li2008", "Li et al., HyperMIP, IEEE HASE 2008",
          "mobile IP driven by the hypervisor; proxy ARP at the home agent",
          "Xen (its link not confirmed from our sources)",
          "< 4 s (abstract: network restored in about 3 s)",
          "512 MiB busybox guest, continental (50 ms, 100 Mbit/s), mobile-ip (router A the "
          "home agent, VXLAN to B), QEMU's default precopy",
          {"vm": {"ram_mib": 512}, "memory": {"strategy": "precopy"},
           "network": {"mode": "mobile-ip"}, "wan": {"profile": "continental"}}),
    Paper("liu2009", "Liu et al., HPDC 2009",
          "trace and replay: ship an execution log instead of dirty pages",
          "Xen-based CR/TR-Motion", "tens of ms outage (abstract: up to 72.4 % less downtime "
                                    "than precopy)",
          missing="wanmig does not record and replay a guest (QEMU's record/replay is not "
                  "used)"),
    Paper("ramakrishnan2007", "Ramakrishnan et al., INM 2007",
          "cooperative, context-aware moves of a whole data centre: network, storage, order",
          "a position paper", "no figure of its own in our sources",
          missing="wanmig moves one VM; planning the move of many (plan/) is not built"),
    Paper("silvera2009", "Silvera et al., SYSTOR 2009",
          "IP mobility: the VM keeps its address after moving to a foreign subnet",
          "not confirmed from our sources", "no figure in our sources",
          "512 MiB busybox guest, continental (50 ms, 100 Mbit/s), route (the VM's /32 "
          "announced by BGP from B's router), QEMU's default precopy",
          {"vm": {"ram_mib": 512}, "memory": {"strategy": "precopy"},
           "network": {"mode": "route"}, "wan": {"profile": "continental"}}),
    Paper("voorsluys2009", "Voorsluys et al., CloudCom 2009",
          "the cost of live migration on a live multi-tier web application",
          "Xen on a LAN, a Web 2.0 application (Olio) under load, shared storage",
          "3 s outage, 44 s migration",
          "Debian guest (nginx + Redis, 20 requests/s), 512 MiB, lan (0.2 ms, 1 Gbit/s), "
          "shared storage, l2-extend, QEMU's default precopy",
          {"vm": {**DEBIAN_VM, "ram_mib": 512, "root": "debian", "workload": "app",
                  "web_rps": 20}, "memory": {"strategy": "precopy"},
           "network": {"mode": "l2-extend"}, "wan": {"profile": "lan"}}),
    Paper("hirofuchi2009", "Hirofuchi et al., CCGrid 2009 (xNBD)",
          "storage through a proxy: B runs at once, missing blocks fetched on demand, the "
          "rest copied in the background",
          "Xen/KVM over an emulated WAN; the project's demo used a 100 Mbit/s WAN",
          "12 min total",
          "Debian guest on a 2 GiB disk writing 5 MB/s, continental (50 ms, 100 Mbit/s), "
          "storage postcopy over QEMU's NBD (the proxy's pattern), QEMU's default precopy",
          {"vm": {**DEBIAN_VM, "disk_write_mbps": 5.0}, "memory": {"strategy": "precopy"},
           "storage": {"strategy": "postcopy", "transport": "qemu"},
           "network": {"mode": "l2-extend"}, "wan": {"profile": "continental"}},
          compare=("storage_ms", "dest_running_ms", "total_ms"), moves_disk=True),
)


@dataclass(frozen=True)
class SeedCase:
    paper: Paper
    run: str

    @property
    def name(self) -> str:
        return f"{self.paper.key}/{self.run}"

    @property
    def labels(self) -> dict[str, Any]:
        return {"paper": self.paper.key, "run": self.run}


def plan_cases(papers: Sequence[str] | None = None) -> list[SeedCase]:
    """Both runs of every implemented paper (of ``papers``, if given), in the table's
    order; ConfigError names an unknown paper, or one whose technique is missing."""
    known = {p.key: p for p in PAPERS}
    for key in papers or ():
        if key not in known:
            raise ConfigError(f"unknown paper {key!r}; known: {', '.join(known)}",
                              field="paper")
        if not known[key].implemented:
            raise ConfigError(f"{key}: not implemented ({known[key].missing})", field="paper")
    chosen = [p for p in PAPERS if p.implemented and (not papers or p.key in papers)]
    return [SeedCase(p, run) for p in chosen for run in RUNS]


FIGURES: Figures = {
    **RUN_FIGURES,
    "storage_ms": lambda r: field_of(r, "storage", "total_ms"),
    "dest_running_ms": lambda r: field_of(r, "storage", "time_to_dest_running_ms"),
    "new_conn_ms": lambda r: field_of(r, "network", "new_conn_ms"),
    "http_failed_1s": lambda r: field_of(r, "network", "http_failed_1s"),
}


#: How each figure a paper is about is named in the table and the comparisons.
LABELS = {"outage_ms": "outage", "total_ms": "total", "new_conn_ms": "new conn",
          "storage_ms": "disk in sync", "dest_running_ms": "B running",
          "memory_ms": "memory"}


def ratio(x: float) -> str:
    """A ratio with two significant digits below 0.1 (a 12 ms against 5.7 s is not 0.00×)."""
    return f"{x:.2f}×" if x >= 0.1 else f"{x:.2g}×"


def comparisons(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per paper, wanmig's best against the technique on the figures the paper is about
    (``ok`` None: comparisons, not targets)."""
    by = {row["case"]: {k: f["median"] for k, f in row["figures"].items()} for row in summary}
    out = []
    for paper in PAPERS:
        tech, best = by.get(f"{paper.key}/technique"), by.get(f"{paper.key}/best")
        if tech is None or best is None:
            continue
        parts = [f"{LABELS[name]} {ratio(best[name] / tech[name])}" for name in paper.compare
                 if tech.get(name) and best.get(name) is not None]
        if parts:
            out.append({"check": f"{paper.key}: best against the technique", "ok": None,
                        "detail": ", ".join(parts), "case": paper.key})
    return out


async def run_seeds_bench(*, papers: Sequence[str] | None = None,
                          repeat: int = DEFAULT_REPEAT, out: Path | None = None,
                          build_dir: Path | None = None, ui: Ui | None = None,
                          say: Say | None = None) -> dict[str, Any]:
    """Every implemented paper's two runs, ``repeat`` times each; the runner's document,
    kind ``seeds``, with every paper's facts (``papers``) for the table."""
    from ..orchestrator import Orchestrator   # the engine, only once a run is asked for

    cases = plan_cases(papers)
    scenarios = {c.name: parse_scenario(c.paper.run_scenario(c.run)) for c in cases}
    bench = BenchRun("seeds", cases, figures=FIGURES, checks=comparisons,
                     settings={"best": "memory auto, storage auto, network route"},
                     repeat=repeat, out=out, say=say)
    bench.doc["papers"] = [p.info() for p in PAPERS]

    async def migrate(case: SeedCase, index: int) -> Entry:
        record = await Orchestrator(scenarios[case.name], build_dir=build_dir, ui=ui).run()
        bench.say(f"    {record.status}: total {record.total_ms / 1000:.1f} s, outage "
                  f"{record.network.client_outage_ms} ms"
                  + (f" ({record.error})" if record.error else ""))
        return json.loads(record.model_dump_json())

    return await bench.run(migrate)
