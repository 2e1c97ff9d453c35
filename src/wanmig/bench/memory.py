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

Before the first migration the bench calibrates the TCG floor once
(``bench.floor``: the guest at one site paused and resumed while the
client's probes run, ``floor_cycles`` times; 0 skips it): a resumed TCG
guest needs tens of ms to answer, whatever the strategy.  The calibration is
kept in the settings (``tcg_floor``) and its median in every record
(``network.tcg_floor_ms``), and the outage targets on RTT are checked on
``client_outage_ms`` minus it (the raw outage where none was measured).

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
from .floor import DEFAULT_PAUSE_MS, check_floor_options, measure_tcg_floor
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
VERIFY_PAIR = ("auto", "idle")  # also run unverified: does the verify pause come off cleanly?
OUTAGE_CAP_MS = 1000.0          # auto, where QEMU's defaults do not converge
OUTAGE_OVER_RTT_MS = 100.0      # auto, idle and web: outage - TCG floor <= RTT + this
FLOOR_CYCLES = 5                # stop/cont cycles of the TCG floor's calibration
BYTES_SHARE = 0.5               # precopy-tuned / precopy bytes, web
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
    verify: bool = True   # memory.verify: every run of the bench checks both copies

    @property
    def _suffix(self) -> list[str]:
        return ([] if self.tls else ["insecure"]) + ([] if self.verify else ["unverified"])

    @property
    def name(self) -> str:
        return "/".join([self.strategy, self.workload, *self._suffix])

    @property
    def labels(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "workload": self.workload, "tls": self.tls,
                "verify": self.verify, "profile": self.profile}

    def scenario(self, timeout_s: float) -> dict[str, Any]:
        return {"name": "-".join(["bench", self.strategy, self.workload, *self._suffix]),
                "vm": {"ram_mib": RAM_MIB, "dirty_mib": DIRTY_MIB, **WORKLOADS[self.workload]},
                "memory": {"strategy": self.strategy, "timeout_s": timeout_s, "tls": self.tls,
                           "verify": self.verify},
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
    if tls_pair and Case(*VERIFY_PAIR, profile=profile) in cases:
        cases.append(Case(*VERIFY_PAIR, profile=profile, verify=False))
    return cases


def _part(entry: Entry, part: str) -> dict[str, Any]:
    return entry.get(part) or {}


def _flag(value: object) -> float:
    return 1.0 if value else 0.0


def _net_outage(entry: Entry) -> float | None:
    """The client's outage less the time B waited for verify mode's comparison: what
    the migration itself cost the client (the ``auto/idle/unverified`` pair checks it)."""
    outage = _part(entry, "network").get("client_outage_ms")
    verify = _part(entry, "integrity").get("memory_verify_ms") or 0.0
    return None if outage is None else round(outage - verify, 3)


def _over_floor(entry: Entry) -> float | None:
    """The net outage less the TCG floor (None without either)."""
    outage, floor = _net_outage(entry), _part(entry, "network").get("tcg_floor_ms")
    return None if outage is None or floor is None else round(outage - floor, 3)


def _timeline(entry: Entry) -> dict[str, float]:
    """The record's ``switchover_timeline``: ms after the source's STOP ({} without it)."""
    return entry.get("switchover_timeline") or {}


def _held(entry: Entry) -> float | None:
    """From the source's STOP to B's RESUME, less verify mode's pause: the switchover."""
    resume = _timeline(entry).get("resume")
    verify = _part(entry, "integrity").get("memory_verify_ms") or 0.0
    return None if resume is None else round(resume - verify, 1)


def _answer(entry: Entry) -> float | None:
    """From B's RESUME to the client's first answer: the end of the largest echo gap, when
    that gap is the switchover's (it spans the RESUME); None otherwise."""
    t = _timeline(entry)
    start, resume, end = t.get("client_gap_start"), t.get("resume"), t.get("client_gap_end")
    if start is None or resume is None or end is None or not start <= resume <= end:
        return None
    return round(end - resume, 1)


def _mismatch(entry: Entry) -> float | None:
    """1 when verify mode found the copies different, 0 when equal, None if not compared."""
    match = _part(entry, "integrity").get("memory_match")
    return None if match is None else _flag(match is False)


FIGURES: Figures = {
    "completed": lambda r: _flag(r.get("status") == "completed"),
    "converged": lambda r: _flag(_part(r, "memory").get("converged")),
    "total_ms": lambda r: _part(r, "memory").get("total_ms"),
    "downtime_ms": lambda r: _part(r, "memory").get("downtime_ms"),
    "outage_ms": lambda r: _part(r, "network").get("client_outage_ms"),
    "verify_ms": lambda r: _part(r, "integrity").get("memory_verify_ms"),
    "net_outage_ms": _net_outage,
    "floor_ms": lambda r: _part(r, "network").get("tcg_floor_ms"),
    "outage_over_floor_ms": _over_floor,
    # where the outage went (switchover_timeline): STOP to B's RESUME less the verify
    # pause, then B's RESUME to the client's first answer
    "held_ms": _held,
    "answer_ms": _answer,
    "bytes": lambda r: _part(r, "memory").get("bytes"),
    # bytes on the WAN, headers and TLS included (site A's inter-site interface)
    "wire_bytes": lambda r: _part(r, "memory").get("wire_bytes") or _part(r, "memory").get("bytes"),
    "predicted_total_ms": lambda r: ((_part(r, "memory").get("decision") or {})
                                     .get("predicted") or {}).get("total_ms"),
    "rtt_ms": lambda r: _part(r, "wan").get("rtt_measured_ms"),
    "predicted_outage_ms": lambda r: ((_part(r, "memory").get("decision") or {})
                                      .get("predicted") or {}).get("outage_ms"),
    "memory_mismatch": _mismatch,
    "guest_memory_errors": lambda r: _part(r, "integrity").get("guest_memory_errors"),
    "rounds": lambda r: _part(r, "memory").get("rounds"),
    "postcopy_requests": lambda r: _part(r, "memory").get("postcopy_requests"),
}


def evaluate_checks(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets on the medians of ``summary``: one entry per check, ``ok`` None
    when a figure needed is not there."""
    by_case = {row["case"]: {**medians(row), "runs": row["runs"]} for row in summary}
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str,
            limit: dict[str, Any] | None = None) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail,
                       **({"limit": limit} if limit else {})})

    def find(strategy: str, workload: str, tls: bool = True,
             verify: bool = True) -> dict[str, Any] | None:
        return by_case.get(Case(strategy, workload, tls, verify=verify).name)

    for workload in WORKLOADS:
        auto, base = find("auto", workload), find("precopy", workload)
        if auto is None:
            continue
        completed = auto["completed"] == 1
        add(f"auto completes {workload}", completed, ("completed" if completed else "did not "
            "complete") + (f" (median of {auto['runs']} runs)" if auto["runs"] > 1 else ""))
        # what the migration cost the client: less verify mode's pause (and the floor)
        out = auto["net_outage_ms"]
        less_verify = ("" if auto["verify_ms"] is None
                       else f" - verify {auto['verify_ms']} ms")
        if base is not None and base["converged"] != 1:
            add(f"auto outage <= {OUTAGE_CAP_MS:.0f} ms where precopy did not converge "
                f"({workload})", completed and out is not None and out <= OUTAGE_CAP_MS,
                f"outage {auto['outage_ms']} ms{less_verify} = {out} ms")
        if workload in ("idle", "web"):
            bound = None if auto["rtt_ms"] is None else auto["rtt_ms"] + OUTAGE_OVER_RTT_MS
            floor = auto["floor_ms"]
            added = out if floor is None else auto["outage_over_floor_ms"]
            add(f"auto outage - TCG floor <= RTT + {OUTAGE_OVER_RTT_MS:.0f} ms ({workload})",
                None if added is None or bound is None else added <= bound,
                f"outage {auto['outage_ms']} ms{less_verify}"
                + (" (no floor measured)" if floor is None else f" - floor {floor} ms")
                + ("" if floor is None and not less_verify else f" = {added} ms")
                + f", bound {bound and round(bound, 1)} ms")
        for what, predicted, measured in (
                ("total", auto["predicted_total_ms"], auto["total_ms"]),
                ("outage", auto["predicted_outage_ms"], out)):
            if completed and predicted and measured:
                err = (predicted - measured) / measured
                add(f"auto {what} predicted within ±{PREDICTION_TOLERANCE:.0%} ({workload})",
                    abs(err) <= PREDICTION_TOLERANCE,
                    f"predicted {predicted:.0f} ms, measured {measured:.0f} ms ({err:+.0%})")
    unverified = find(*VERIFY_PAIR, verify=False)
    verified = find(*VERIFY_PAIR)
    if unverified and verified:
        a, b = verified["net_outage_ms"], unverified["outage_ms"]
        add(f"outage less the verify pause matches an unverified run ({'/'.join(VERIFY_PAIR)})",
            None if a is None or b is None else abs(a - b) <= max(50.0, 0.25 * b),
            f"{a} ms verified (net), {b} ms unverified")
    # never traded for another target: every run, not the medians
    compared = sum(row["figures"]["memory_mismatch"]["n"] for row in summary)
    mismatched = sum(row["figures"]["memory_mismatch"]["max"] or 0 for row in summary)
    guest_errors = sum(row["figures"]["guest_memory_errors"]["max"] or 0 for row in summary)
    add("0 memory mismatches in every verified run", compared > 0 and mismatched == 0,
        f"{compared} runs compared page by page; cases with a mismatch: {mismatched:.0f}")
    add("0 guest memory errors", guest_errors == 0,
        f"largest count per case summed: {guest_errors:.0f}")
    tuned, base = find("precopy-tuned", "web"), find("precopy", "web")
    if tuned and base:
        tb, bb = tuned["wire_bytes"], base["wire_bytes"]
        add(f"precopy-tuned bytes <= {BYTES_SHARE} x precopy (web)",
            None if not (tb and bb) else tb <= BYTES_SHARE * bb,
            f"{tb} vs {bb} bytes" + (f" ({tb / bb:.2f})" if tb and bb else ""),
            limit={"figure": "wire_bytes", "value": BYTES_SHARE * bb,
                   "case": Case("precopy-tuned", "web").name} if bb else None)
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
                           floor_cycles: int = FLOOR_CYCLES,
                           out: Path | None = None, build_dir: Path | None = None,
                           ui: Ui | None = None, say: Say | None = None) -> dict[str, Any]:
    """Calibrate the TCG floor (``floor_cycles`` stop/cont cycles, 0: not at all), then run
    the matrix, each case ``repeat`` times; the runner's document, kind ``memory``.

    Every option is checked (ConfigError) before the first migration starts.
    """
    cases = plan_cases(strategies, workloads, profile=profile)
    scenarios = {c: parse_scenario(c.scenario(timeout_s)) for c in cases}
    if floor_cycles != 0:
        check_floor_options(floor_cycles, DEFAULT_PAUSE_MS, field="floor_cycles")
    bench = BenchRun("memory", cases, figures=FIGURES, checks=evaluate_checks,
                     settings={"ram_mib": RAM_MIB, "dirty_mib": DIRTY_MIB, "profile": profile,
                               "timeout_s": timeout_s, "floor_cycles": floor_cycles,
                               "tcg_floor": None},
                     repeat=repeat, out=out, say=say)
    bench.begin()  # an unwritable --json fails before the calibration
    floor_ms: float | None = None
    if floor_cycles:
        bench.say(f"calibrating the TCG floor ({floor_cycles} stop/cont cycles, no migration)")
        floor = await measure_tcg_floor(cycles=floor_cycles, ram_mib=RAM_MIB, profile=profile,
                                        build_dir=build_dir, ui=ui, say=bench.say)
        floor_ms = floor.floor_ms
        bench.note_settings(tcg_floor=floor.to_dict())
        bench.say(f"    TCG floor {floor_ms} ms (median of {floor_cycles}; "
                  f"{floor.floor['min']}–{floor.floor['max']} ms)")

    async def migrate(case: Case, index: int) -> Entry:
        record = await Orchestrator(scenarios[case], build_dir=build_dir, ui=ui).run()
        record.network.tcg_floor_ms = floor_ms
        bench.say(f"    {record.status}: memory {record.memory.strategy} total "
                  f"{record.memory.total_ms} ms, outage {record.network.client_outage_ms} ms"
                  + ("" if floor_ms is None else f" (TCG floor {floor_ms} ms)") + ", "
                  f"{(record.memory.bytes or 0) / 2**20:.1f} MiB")
        return json.loads(record.model_dump_json())

    return await bench.run(migrate)
