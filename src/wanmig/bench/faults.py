"""``wanmig bench faults``: the fault campaign, every fault the engine injects, one run each.

The matrix (``plan_cases``, pure): WAN outages of 2, 10 and 30 s (``[fault]
link_down_phase``/``link_down_s``) in each phase they can hit -- the memory copy and the
switchover under QEMU's precopy, B running on borrowed pages under postcopy, the disk
copy under each storage strategy that copies -- and, at 10 s during the switchover,
under each network mode; and the destination killed at each point (``kill_destination``).
Each run is one full migration by the orchestrator; its entry is the result record
plus what the campaign judges (``verdict``): how it ended, whether the guest was lost,
how long both copies ran at once (``integrity.both_running_ms``, from QEMU's own
STOP/RESUME events), and what the run left behind (``registry.leftovers``).

Faults the issue lists that the engine cannot inject yet -- the source QEMU killed, a
QEMU that stops answering (SIGSTOP), the controller killed in each phase -- are listed
in the document's ``not_implemented``, never replaced by another fault.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import parse_scenario
from ..errors import ConfigError
from ..registry import leftovers
from .runner import RUN_FIGURES, BenchRun, Entry, Figures, Say, field_of

if TYPE_CHECKING:
    from ..orchestrator import Ui

OUTAGES_S = (2, 10, 30)
NETWORK_OUTAGE_S = 10
SMALL_VM = {"ram_mib": 192}
DISK_VM = {"ram_mib": 256, "base": "debian", "disk_mib": 2048, "disk_write_mbps": 2.0}
#: The storage strategies that copy during the storage phase.  libvirt's default mirror
#: never gets ready while the guest writes (``wanmig bench storage``): its synchronous
#: mode, what an operator falls back to, is the one an outage is tried on.
STORAGE_CASES = {"mirror-sync": {"strategy": "mirror", "synchronous_writes": True},
                 "precopy": {"strategy": "precopy"}, "hybrid": {"strategy": "hybrid"}}
STORAGE_TIMEOUT_S = 120.0
KILL_POINTS = ("memory", "pre-switchover", "after-resume", "postcopy")
NOT_IMPLEMENTED = (
    "the source QEMU killed in each phase",
    "a QEMU that stops answering QMP (SIGSTOP) in each phase",
    "the controller killed in each phase (one case is an integration test, not a bench case)",
)


@dataclass(frozen=True)
class FaultCase:
    name: str
    fault: dict[str, Any]
    tables: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, Any]:
        return {"fault": self.fault}

    def scenario(self) -> dict[str, Any]:
        tables = json.loads(json.dumps(self.tables))
        tables.setdefault("vm", dict(SMALL_VM))
        return {"name": "faults-" + self.name.replace("/", "-"), **tables,
                "fault": self.fault}


def _outage(phase: str, seconds: int) -> dict[str, Any]:
    return {"link_down_phase": phase, "link_down_s": seconds}


def plan_cases(only: Sequence[str] | None = None) -> list[FaultCase]:
    """The whole matrix, or the cases whose name starts with one of ``only``
    (``link/postcopy``, say); ConfigError where nothing matches."""
    cases = []
    for seconds in OUTAGES_S:
        for phase in ("memory", "switchover"):
            cases.append(FaultCase(f"link/precopy/{phase}/{seconds}s", _outage(phase, seconds)))
        cases.append(FaultCase(f"link/postcopy/postcopy/{seconds}s",
                               _outage("postcopy", seconds),
                               {"memory": {"strategy": "postcopy"}}))
        for name, storage in STORAGE_CASES.items():
            cases.append(FaultCase(f"link/storage-{name}/storage/{seconds}s",
                                   _outage("storage", seconds),
                                   {"vm": dict(DISK_VM),
                                    "storage": {**storage, "timeout_s": STORAGE_TIMEOUT_S},
                                    "memory": {"strategy": "precopy-tuned"}}))
    for mode in ("l2-extend", "dns-tunnel", "mobile-ip", "route"):
        cases.append(FaultCase(f"link/network-{mode}/switchover/{NETWORK_OUTAGE_S}s",
                               _outage("switchover", NETWORK_OUTAGE_S),
                               {"network": {"mode": mode}}))
    for point in KILL_POINTS:
        tables = {"memory": {"strategy": "postcopy"}} if point == "postcopy" else {}
        cases.append(FaultCase(f"kill-destination/{point}", {"kill_destination": point},
                               tables))
    if only:
        cases = [c for c in cases if any(c.name.startswith(o) for o in only)]
        if not cases:
            raise ConfigError(f"no fault case starts with {', '.join(only)}", field="case")
    return cases


def verdict(entry: Entry, left: list[str]) -> dict[str, Any]:
    """What the campaign judges of one run: it ended as it may (completed or rolled back,
    or a lost VM said so where the only complete copy died), one copy ran at a time,
    nothing was lost from the guest's log, and nothing was left behind."""
    integrity = entry.get("integrity") or {}
    status = entry.get("status")
    vm_lost = bool(entry.get("vm_lost"))
    return {
        "status": status, "vm_lost": vm_lost,
        "ended_safely": status in ("completed", "rolled_back") or (vm_lost and status
                                                                    == "failed"),
        "both_running_ms": integrity.get("both_running_ms"),
        "log_lost": integrity.get("guest_log_gaps"),
        "log_out_of_order": integrity.get("guest_log_out_of_order"),
        "disk_match": integrity.get("disk_match"),
        "leftovers": left,
    }


FIGURES: Figures = {
    **RUN_FIGURES,
    "vm_lost": lambda r: 1.0 if r.get("vm_lost") else 0.0,
    "kept": lambda r: 1.0 if r.get("status") in ("completed", "rolled_back") else 0.0,
    "ended_safely": lambda r: 1.0 if field_of(r, "campaign", "ended_safely") else 0.0,
    "both_running_ms": lambda r: field_of(r, "integrity", "both_running_ms"),
    "log_gaps": lambda r: field_of(r, "integrity", "guest_log_gaps"),
    "out_of_order": lambda r: field_of(r, "integrity", "guest_log_out_of_order"),
    "leftovers": lambda r: float(len(field_of(r, "campaign", "leftovers") or [])),
}


def evaluate_checks(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets over every run (each case runs once: its figures are its run)."""
    rows = {row["case"]: row["figures"] for row in summary}

    def cases(prefix: str) -> list[str]:
        return [c for c in rows if c.startswith(prefix)]

    def held(names: list[str], figure: str) -> list[str]:
        return [c for c in names if rows[c][figure]["max"] == 1]

    checks = []
    for prefix, figure, label in (
            ("link/", "kept", "every WAN outage ends completed or rolled back, 0 vm_lost"),
            ("kill-", "ended_safely", "every kill ends safely (vm_lost only where the only "
                                      "complete copy died, and said so)")):
        names = cases(prefix)
        if names:
            ok = held(names, figure)
            checks.append({"check": label, "ok": len(ok) == len(names),
                           "detail": f"{len(ok)} of {len(names)}; not: "
                                     + (", ".join(sorted(set(names) - set(ok))) or "none")})
    for name, label in (("both_running_ms", "ms with two copies running"),
                        ("log_gaps", "lost log records"),
                        ("out_of_order", "out-of-order log records"),
                        ("leftovers", "leftovers")):
        values = [f[name]["max"] for f in rows.values() if f[name]["n"]]
        worst = max(values, default=None)
        checks.append({"check": f"0 {label} across the campaign",
                       "ok": None if worst is None else worst == 0,
                       "detail": f"worst run {worst:g}, {len(values)} runs measured"
                                 if worst is not None else "not measured"})
    return checks


async def run_faults_bench(*, cases: Sequence[str] | None = None, out: Path | None = None,
                           build_dir: Path | None = None, ui: Ui | None = None,
                           say: Say | None = None) -> dict[str, Any]:
    """Every case once (a fault campaign is judged run by run); the runner's document,
    kind ``faults``."""
    from ..orchestrator import Orchestrator   # the engine, only once a run is asked for

    planned = plan_cases(cases)
    scenarios = {c.name: parse_scenario(c.scenario()) for c in planned}
    bench = BenchRun("faults", planned, figures=FIGURES, checks=evaluate_checks,
                     settings={"outages_s": list(OUTAGES_S)}, out=out, say=say)
    bench.doc["not_implemented"] = list(NOT_IMPLEMENTED)

    async def migrate(case: FaultCase, index: int) -> Entry:
        record = await Orchestrator(scenarios[case.name], build_dir=build_dir, ui=ui).run()
        entry = json.loads(record.model_dump_json())
        entry["campaign"] = verdict(entry, leftovers(record.run_id or "?"))
        c = entry["campaign"]
        bench.say(f"    {record.status}{' (VM lost)' if c['vm_lost'] else ''}: outage "
                  f"{record.network.client_outage_ms} ms, both running "
                  f"{c['both_running_ms']} ms, log gaps {c['log_lost']}, leftovers "
                  f"{len(c['leftovers'])}")
        return entry

    return await bench.run(migrate)
