"""``wanmig bench memory``: every memory strategy against every workload, one run.

The matrix (``plan_cases``, pure): strategies precopy (QEMU's defaults, the
baseline), precopy-tuned, postcopy, hybrid and auto, times the workloads idle,
web, and dirty at 5, 20 and 50 MB/s (64 MiB working set), for a 512 MiB guest
on the ``continental`` profile; plus one pair that prices TLS: default precopy
on the idle guest with and without TLS.  Each case is one full migration by the
orchestrator (its own sites, guest, probes), so each result is an ordinary
result record, labelled with ``bench`` (case name, workload label, TLS).

A case that does not converge is stopped after ``timeout_s`` of iteration and
rolled back (the guest keeps running at the source); its record has
``memory.converged`` false.  That is a result, not an error: it is how QEMU's
defaults fare against a busy guest over a WAN.

``evaluate_checks`` (pure) turns the records into the issue's target checks.
Results are written after every case, so a crash keeps what ran.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import parse_scenario
from ..fileio import atomic_write
from ..orchestrator import Orchestrator, Ui
from ..record import ResultRecord

log = logging.getLogger("wanmig.memory.bench")

STRATEGIES = ("precopy", "precopy-tuned", "postcopy", "hybrid", "auto")
WORKLOADS: dict[str, dict[str, Any]] = {
    "idle": {"workload": "idle"},
    "web": {"workload": "web"},
    "dirty-5": {"workload": "dirty", "dirty_rate_mbps": 5.0},
    "dirty-20": {"workload": "dirty", "dirty_rate_mbps": 20.0},
    "dirty-50": {"workload": "dirty", "dirty_rate_mbps": 50.0},
}
RAM_MIB = 512
DIRTY_MIB = 64
PROFILE = "continental"
TIMEOUT_S = 150.0
TLS_PAIR = ("precopy", "idle")
OUTAGE_CAP_MS = 1000.0          # auto, where QEMU's defaults do not converge
OUTAGE_OVER_RTT_MS = 100.0      # auto, idle and web: outage <= RTT + this
BYTES_SHARE = 0.6               # precopy-tuned / precopy bytes, web
PREDICTION_TOLERANCE = 0.25     # auto: |predicted - measured| / measured total
TLS_COST_SHARE = 0.10


@dataclass(frozen=True)
class Case:
    strategy: str
    workload: str
    tls: bool = True

    @property
    def name(self) -> str:
        return f"{self.strategy}/{self.workload}" + ("" if self.tls else "/insecure")

    def scenario(self, profile: str, timeout_s: float) -> dict[str, Any]:
        return {"name": f"bench-{self.strategy}-{self.workload}" + ("" if self.tls else "-insecure"),
                "vm": {"ram_mib": RAM_MIB, "dirty_mib": DIRTY_MIB, **WORKLOADS[self.workload]},
                "memory": {"strategy": self.strategy, "timeout_s": timeout_s, "tls": self.tls},
                "wan": {"profile": profile}}


def plan_cases(strategies: Sequence[str] | None = None,
               workloads: Sequence[str] | None = None, *, tls_pair: bool = True) -> list[Case]:
    """The matrix, strategy-major, then the TLS pair's insecure half (if its case runs)."""
    strategies = list(strategies or STRATEGIES)
    workloads = list(workloads or WORKLOADS)
    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; known: {', '.join(STRATEGIES)}")
    for w in workloads:
        if w not in WORKLOADS:
            raise ValueError(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    cases = [Case(s, w) for s in strategies for w in workloads]
    if tls_pair and Case(*TLS_PAIR) in cases:
        cases.append(Case(*TLS_PAIR, tls=False))
    return cases


def _find(records: Sequence[dict[str, Any]], strategy: str, workload: str,
          tls: bool = True) -> dict[str, Any] | None:
    for r in records:
        b = r.get("bench", {})
        if b.get("strategy") == strategy and b.get("workload") == workload and b.get("tls") == tls:
            return r
    return None


def _wire(r: dict[str, Any]) -> int | None:
    """Bytes on the WAN (QEMU 7.2 counts multifd pages before compression)."""
    m = r.get("memory") or {}
    return m.get("wire_bytes") or m.get("bytes")


def _outage(r: dict[str, Any]) -> float | None:
    return (r.get("network") or {}).get("client_outage_ms")


def evaluate_checks(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets on these records: one entry per check, ``ok`` None when
    the records needed are not in this run."""
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    for workload in WORKLOADS:
        auto = _find(records, "auto", workload)
        base = _find(records, "precopy", workload)
        if auto is None:
            continue
        completed = auto["status"] == "completed"
        add(f"auto completes {workload}", completed, f"status {auto['status']}")
        if base is not None and not (base.get("memory") or {}).get("converged"):
            out = _outage(auto)
            add(f"auto outage <= {OUTAGE_CAP_MS:.0f} ms where precopy did not converge "
                f"({workload})", completed and out is not None and out <= OUTAGE_CAP_MS,
                f"outage {out} ms")
        if workload in ("idle", "web"):
            out, rtt = _outage(auto), (auto.get("wan") or {}).get("rtt_measured_ms")
            bound = None if rtt is None else rtt + OUTAGE_OVER_RTT_MS
            add(f"auto outage <= RTT + {OUTAGE_OVER_RTT_MS:.0f} ms ({workload})",
                None if out is None or bound is None else out <= bound,
                f"outage {out} ms, bound {bound and round(bound, 1)} ms")
        decision = (auto.get("memory") or {}).get("decision") or {}
        predicted = (decision.get("predicted") or {}).get("total_ms")
        measured = (auto.get("memory") or {}).get("total_ms")
        if completed and predicted and measured:
            err = (predicted - measured) / measured
            add(f"auto prediction within ±{PREDICTION_TOLERANCE:.0%} ({workload})",
                abs(err) <= PREDICTION_TOLERANCE,
                f"predicted {predicted:.0f} ms, measured {measured:.0f} ms ({err:+.0%})")
    tuned, base = _find(records, "precopy-tuned", "web"), _find(records, "precopy", "web")
    if tuned and base:
        tb, bb = _wire(tuned), _wire(base)
        add(f"precopy-tuned bytes <= {BYTES_SHARE} x precopy (web)",
            None if not (tb and bb) else tb <= BYTES_SHARE * bb,
            f"{tb} vs {bb} bytes" + (f" ({tb / bb:.2f})" if tb and bb else ""))
    with_tls, without = _find(records, *TLS_PAIR), _find(records, *TLS_PAIR, tls=False)
    if with_tls and without:
        a, b = (with_tls["memory"] or {}).get("total_ms"), (without["memory"] or {}).get("total_ms")
        add(f"TLS costs <= {TLS_COST_SHARE:.0%} of total time ({'/'.join(TLS_PAIR)})",
            None if not (a and b) else (a - b) / b <= TLS_COST_SHARE,
            f"{a} ms with TLS, {b} ms without" + (f" ({(a - b) / b:+.1%})" if a and b else ""))
    return checks


async def run_memory_bench(out: Path, *, strategies: Sequence[str] | None = None,
                           workloads: Sequence[str] | None = None, profile: str = PROFILE,
                           timeout_s: float = TIMEOUT_S, build_dir: Path | None = None,
                           ui: Ui | None = None,
                           say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run the matrix; write ``{"kind": "memory", "results": [...], "checks": [...]}``."""
    cases = plan_cases(strategies, workloads)
    scenarios = [parse_scenario(c.scenario(profile, timeout_s)) for c in cases]  # fail early
    results: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"kind": "memory", "results": results, "checks": [],
                           "settings": {"ram_mib": RAM_MIB, "dirty_mib": DIRTY_MIB,
                                        "profile": profile, "timeout_s": timeout_s}}
    started = time.monotonic()
    for i, (case, scenario) in enumerate(zip(cases, scenarios), 1):
        say(f"[{i}/{len(cases)}] {case.name}")
        record: ResultRecord = await Orchestrator(scenario, build_dir=build_dir, ui=ui).run()
        entry = json.loads(record.model_dump_json())
        entry["bench"] = {"case": case.name, "strategy": case.strategy,
                          "workload": case.workload, "tls": case.tls, "profile": profile}
        results.append(entry)
        say(f"    {record.status}: memory {record.memory.strategy} total "
            f"{record.memory.total_ms} ms, outage {record.network.client_outage_ms} ms, "
            f"{(record.memory.bytes or 0) / 2**20:.1f} MiB")
        doc["checks"] = evaluate_checks(results)
        doc["seconds"] = round(time.monotonic() - started, 1)
        _write(out, doc)
    return doc


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())
