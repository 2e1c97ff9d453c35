"""``wanmig bench memory``: every memory strategy against every workload.

The matrix (``plan_cases``, pure): the implemented strategies of the parts
table (``wanmig.parts.MEMORY``: precopy, QEMU's defaults, is the baseline)
times the workloads idle, web, and dirty at 5, 20 and 50 MB/s (64 MiB working
set), for a 512 MiB guest on the ``continental`` profile; plus one pair that
prices TLS: default precopy on the idle guest with and without TLS.  Each run
is one full migration by the orchestrator (its own sites, guest, probes), so
each result is an ordinary result record, labelled with ``bench`` (case,
repeat, strategy, workload, TLS, profile) by the runner.

A case that does not converge is stopped after ``timeout_s`` of iteration and
rolled back (the guest keeps running at the source); its record has
``memory.converged`` false.  That is a result, not an error: it is how QEMU's
defaults fare against a busy guest over a WAN.

``FIGURES`` are what varies from run to run (times, outage, bytes, and
whether the run completed and converged, as 1/0: their median is the
majority); ``evaluate_checks`` (pure) reads the summary's medians.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import parse_scenario
from ..errors import ConfigError
from ..orchestrator import Orchestrator
from ..parts import MEMORY, PartError
from .runner import BenchRun, Entry, Figures, Say, medians

if TYPE_CHECKING:
    from ..orchestrator import Ui

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
DEFAULT_REPEAT = 1              # a run takes minutes: one each unless asked
TLS_PAIR = ("precopy", "idle")
OUTAGE_CAP_MS = 1000.0          # auto, where QEMU's defaults do not converge
OUTAGE_OVER_RTT_MS = 100.0      # auto, idle and web: outage <= RTT + this
BYTES_SHARE = 0.6               # precopy-tuned / precopy bytes, web
PREDICTION_TOLERANCE = 0.25     # auto: |predicted - measured| / measured total
TLS_COST_SHARE = 0.10


def default_strategies() -> tuple[str, ...]:
    """The strategies the bench runs by default: every implemented one, in the table's order."""
    return MEMORY.names(implemented=True)


@dataclass(frozen=True)
class Case:
    strategy: str
    workload: str
    tls: bool = True
    profile: str = PROFILE

    @property
    def name(self) -> str:
        return f"{self.strategy}/{self.workload}" + ("" if self.tls else "/insecure")

    @property
    def labels(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "workload": self.workload, "tls": self.tls,
                "profile": self.profile}

    def scenario(self, timeout_s: float) -> dict[str, Any]:
        return {"name": f"bench-{self.strategy}-{self.workload}" + ("" if self.tls else "-insecure"),
                "vm": {"ram_mib": RAM_MIB, "dirty_mib": DIRTY_MIB, **WORKLOADS[self.workload]},
                "memory": {"strategy": self.strategy, "timeout_s": timeout_s, "tls": self.tls},
                "wan": {"profile": self.profile}}


def plan_cases(strategies: Sequence[str] | None = None,
               workloads: Sequence[str] | None = None, *, profile: str = PROFILE,
               tls_pair: bool = True) -> list[Case]:
    """The matrix, strategy-major, then the TLS pair's insecure half (if its case runs).

    ConfigError names an unknown (or unimplemented) strategy or an unknown workload.
    """
    chosen = list(strategies or default_strategies())
    workloads = list(workloads or WORKLOADS)
    for s in chosen:
        try:
            MEMORY.info(s)
        except PartError as exc:
            raise ConfigError(str(exc), field="strategy") from None
    for w in workloads:
        if w not in WORKLOADS:
            raise ConfigError(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}",
                              field="workload")
    cases = [Case(s, w, profile=profile) for s in chosen for w in workloads]
    if tls_pair and Case(*TLS_PAIR, profile=profile) in cases:
        cases.append(Case(*TLS_PAIR, tls=False, profile=profile))
    return cases


def _part(entry: Entry, part: str) -> dict[str, Any]:
    return entry.get(part) or {}


def _flag(value: object) -> float:
    return 1.0 if value else 0.0


FIGURES: Figures = {
    "completed": lambda r: _flag(r.get("status") == "completed"),
    "converged": lambda r: _flag(_part(r, "memory").get("converged")),
    "total_ms": lambda r: _part(r, "memory").get("total_ms"),
    "downtime_ms": lambda r: _part(r, "memory").get("downtime_ms"),
    "outage_ms": lambda r: _part(r, "network").get("client_outage_ms"),
    "bytes": lambda r: _part(r, "memory").get("bytes"),
    # bytes on the WAN (QEMU 7.2 counts multifd pages before compression)
    "wire_bytes": lambda r: _part(r, "memory").get("wire_bytes") or _part(r, "memory").get("bytes"),
    "predicted_total_ms": lambda r: ((_part(r, "memory").get("decision") or {})
                                     .get("predicted") or {}).get("total_ms"),
    "rtt_ms": lambda r: _part(r, "wan").get("rtt_measured_ms"),
    "rounds": lambda r: _part(r, "memory").get("rounds"),
    "postcopy_requests": lambda r: _part(r, "memory").get("postcopy_requests"),
}


def evaluate_checks(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets on the medians of ``summary``: one entry per check, ``ok`` None
    when a figure needed is not there."""
    by_case = {row["case"]: {**medians(row), "runs": row["runs"]} for row in summary}
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    def find(strategy: str, workload: str, tls: bool = True) -> dict[str, Any] | None:
        return by_case.get(Case(strategy, workload, tls).name)

    for workload in WORKLOADS:
        auto, base = find("auto", workload), find("precopy", workload)
        if auto is None:
            continue
        completed = auto["completed"] == 1
        add(f"auto completes {workload}", completed, ("completed" if completed else "did not "
            "complete") + (f" (median of {auto['runs']} runs)" if auto["runs"] > 1 else ""))
        out = auto["outage_ms"]
        if base is not None and base["converged"] != 1:
            add(f"auto outage <= {OUTAGE_CAP_MS:.0f} ms where precopy did not converge "
                f"({workload})", completed and out is not None and out <= OUTAGE_CAP_MS,
                f"outage {out} ms")
        if workload in ("idle", "web"):
            bound = None if auto["rtt_ms"] is None else auto["rtt_ms"] + OUTAGE_OVER_RTT_MS
            add(f"auto outage <= RTT + {OUTAGE_OVER_RTT_MS:.0f} ms ({workload})",
                None if out is None or bound is None else out <= bound,
                f"outage {out} ms, bound {bound and round(bound, 1)} ms")
        predicted, measured = auto["predicted_total_ms"], auto["total_ms"]
        if completed and predicted and measured:
            err = (predicted - measured) / measured
            add(f"auto prediction within ±{PREDICTION_TOLERANCE:.0%} ({workload})",
                abs(err) <= PREDICTION_TOLERANCE,
                f"predicted {predicted:.0f} ms, measured {measured:.0f} ms ({err:+.0%})")
    tuned, base = find("precopy-tuned", "web"), find("precopy", "web")
    if tuned and base:
        tb, bb = tuned["wire_bytes"], base["wire_bytes"]
        add(f"precopy-tuned bytes <= {BYTES_SHARE} x precopy (web)",
            None if not (tb and bb) else tb <= BYTES_SHARE * bb,
            f"{tb} vs {bb} bytes" + (f" ({tb / bb:.2f})" if tb and bb else ""))
    with_tls, without = find(*TLS_PAIR), find(*TLS_PAIR, tls=False)
    if with_tls and without:
        a, b = with_tls["total_ms"], without["total_ms"]
        add(f"TLS costs <= {TLS_COST_SHARE:.0%} of total time ({'/'.join(TLS_PAIR)})",
            None if not (a and b) else (a - b) / b <= TLS_COST_SHARE,
            f"{a} ms with TLS, {b} ms without" + (f" ({(a - b) / b:+.1%})" if a and b else ""))
    return checks


async def run_memory_bench(*, strategies: Sequence[str] | None = None,
                           workloads: Sequence[str] | None = None, profile: str = PROFILE,
                           timeout_s: float = TIMEOUT_S, repeat: int = DEFAULT_REPEAT,
                           out: Path | None = None, build_dir: Path | None = None,
                           ui: Ui | None = None, say: Say | None = None) -> dict[str, Any]:
    """Run the matrix, each case ``repeat`` times; the runner's document, kind ``memory``.

    Every option is checked (ConfigError) before the first migration starts.
    """
    cases = plan_cases(strategies, workloads, profile=profile)
    scenarios = {c: parse_scenario(c.scenario(timeout_s)) for c in cases}
    bench = BenchRun("memory", cases, figures=FIGURES, checks=evaluate_checks,
                     settings={"ram_mib": RAM_MIB, "dirty_mib": DIRTY_MIB, "profile": profile,
                               "timeout_s": timeout_s},
                     repeat=repeat, out=out, say=say)

    async def migrate(case: Case, index: int) -> Entry:
        record = await Orchestrator(scenarios[case], build_dir=build_dir, ui=ui).run()
        bench.say(f"    {record.status}: memory {record.memory.strategy} total "
                  f"{record.memory.total_ms} ms, outage {record.network.client_outage_ms} ms, "
                  f"{(record.memory.bytes or 0) / 2**20:.1f} MiB")
        return json.loads(record.model_dump_json())

    return await bench.run(migrate)
