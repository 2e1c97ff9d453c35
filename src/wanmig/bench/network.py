"""``wanmig bench network``: every network mode, the same guest over the same WANs.

The matrix (``plan_cases``, pure) is the implemented modes of the parts table
(``wanmig.parts.NETWORK``; ``l2-extend`` is the baseline), each one migration of
a 512 MiB idle guest with ``precopy-tuned`` memory, the sites joined by the
``continental`` profile and the client's site joined to each by the same
profile (``wan.client_profile``).  Each run is one full migration by the
orchestrator, so each result is an ordinary result record labelled by the runner.

``evaluate_checks`` (pure) holds the issue's targets against the summary's
medians: ``route`` and ``mobile-ip`` within one inter-site RTT of l2-extend's
outage (measured in the same bench), ``dns-tunnel``'s new connection by name at
B within the TTL and a second, and for every mode the long-lived TCP
connection kept, no gap in the guest's disk log, no new HTTP connection over
1 s and no more echoes lost around the switchover than the outage holds.
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
from ..parts import NETWORK, PartError
from .runner import BenchRun, Entry, Figures, Say, medians

if TYPE_CHECKING:
    from ..orchestrator import Ui

RAM_MIB = 512
PROFILE = "continental"
MEMORY_STRATEGY = "precopy-tuned"
DEFAULT_REPEAT = 1
BASELINE = "l2-extend"
#: The modes held to l2-extend's outage plus one inter-site RTT.
WITHIN_RTT = ("route", "mobile-ip")
#: The modes whose frames for the paused VM must be held, not dropped.
HELD = ("l2-extend", "route", "mobile-ip")


@dataclass(frozen=True)
class Case:
    mode: str
    profile: str = PROFILE

    @property
    def name(self) -> str:
        return self.mode

    @property
    def labels(self) -> dict[str, Any]:
        return {"mode": self.mode, "profile": self.profile, "memory": MEMORY_STRATEGY}

    def scenario(self) -> dict[str, Any]:
        return {"name": f"bench-network-{self.mode}", "vm": {"ram_mib": RAM_MIB},
                "memory": {"strategy": MEMORY_STRATEGY},
                "network": {"mode": self.mode},
                "wan": {"profile": self.profile, "client_profile": self.profile}}


def plan_cases(modes: Sequence[str] | None = None, *, profile: str = PROFILE) -> list[Case]:
    """One case per mode, in the table's order; ConfigError names an unknown or
    unimplemented one."""
    chosen = list(modes or NETWORK.names(implemented=True))
    for mode in chosen:
        try:
            NETWORK.info(mode)
        except PartError as exc:
            raise ConfigError(str(exc), field="mode") from None
    return [Case(m, profile) for m in NETWORK.names() if m in chosen]


def _net(entry: Entry) -> dict[str, Any]:
    return entry.get("network") or {}


def _flag(value: object) -> float | None:
    return None if value is None else (1.0 if value else 0.0)


FIGURES: Figures = {
    "completed": lambda r: _flag(r.get("status") == "completed"),
    "outage_ms": lambda r: _net(r).get("client_outage_ms"),
    "tcp_survived": lambda r: _flag(_net(r).get("tcp_survived")),
    "new_conn_ms": lambda r: _net(r).get("new_conn_ms"),
    "rtt_before_ms": lambda r: _net(r).get("rtt_before_ms"),
    "rtt_after_ms": lambda r: _net(r).get("rtt_after_ms"),
    "udp_lost_switchover": lambda r: _net(r).get("udp_lost_switchover"),
    "udp_lost": lambda r: _net(r).get("udp_lost"),
    "http_failed_1s": lambda r: _net(r).get("http_failed_1s"),
    "probe_interval_ms": lambda r: _net(r).get("probe_interval_ms"),
    "route_switch_ms": lambda r: _net(r).get("route_switch_ms"),
    "dns_ttl_s": lambda r: _net(r).get("dns_ttl_s"),
    "dns_switch_ms": lambda r: _net(r).get("dns_switch_ms"),
    "log_gaps": lambda r: (r.get("integrity") or {}).get("guest_log_gaps"),
    "wan_rtt_ms": lambda r: (r.get("wan") or {}).get("rtt_measured_ms"),
    "downtime_ms": lambda r: (r.get("memory") or {}).get("downtime_ms"),
    "total_ms": lambda r: r.get("total_ms"),
    "wan_bytes": lambda r: r.get("wan_bytes"),
}


def evaluate_checks(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets on the medians: one entry per check, ``ok`` None when a figure
    needed is not there."""
    by_mode = {row["case"]: medians(row) for row in summary}
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str, mode: str,
            limit: tuple[str, float] | None = None) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail, "case": mode,
                       **({"limit": {"figure": limit[0], "value": limit[1], "case": mode}}
                          if limit else {})})

    base = by_mode.get(BASELINE)
    for mode, m in by_mode.items():
        add(f"{mode}: the long-lived TCP connection survives", _is(m["tcp_survived"], 1.0),
            f"tcp_survived {m['tcp_survived']}", mode)
        add(f"{mode}: no gap in the guest's disk log", _is(m["log_gaps"], 0),
            f"{m['log_gaps']} gaps", mode)
        if mode in WITHIN_RTT and base is not None:
            out, ref, rtt = m["outage_ms"], base["outage_ms"], m["wan_rtt_ms"]
            known = None not in (out, ref, rtt)
            add(f"{mode}: outage <= l2-extend's + one RTT",
                out <= ref + rtt if known else None,
                f"{out} ms vs {ref} ms + {rtt} ms", mode,
                ("outage_ms", ref + rtt) if known else None)
        if mode == "dns-tunnel":
            new, ttl = m["new_conn_ms"], m["dns_ttl_s"]
            add(f"{mode}: a new connection by name reaches B within the TTL + 1 s",
                new <= ttl * 1000 + 1000 if None not in (new, ttl) else None,
                f"{new} ms after B resumed, TTL {ttl} s", mode,
                ("new_conn_ms", ttl * 1000 + 1000) if ttl is not None else None)
        if mode in HELD:
            add(f"{mode}: no new HTTP connection over 1 s", _is(m["http_failed_1s"], 0),
                f"{m['http_failed_1s']} over 1 s", mode)
            lost, out, every = m["udp_lost_switchover"], m["outage_ms"], m["probe_interval_ms"]
            known = None not in (lost, out, every)
            add(f"{mode}: echoes lost around the switchover <= outage / interval",
                lost <= out / every if known else None,
                f"{lost} lost, outage {out} ms / {every} ms", mode)
    return checks


def _is(value: float | None, expected: float) -> bool | None:
    return None if value is None else value == expected


async def run_network_bench(*, modes: Sequence[str] | None = None, profile: str = PROFILE,
                            repeat: int = DEFAULT_REPEAT, out: Path | None = None,
                            build_dir: Path | None = None, ui: Ui | None = None,
                            say: Say | None = None) -> dict[str, Any]:
    """Every mode ``repeat`` times; the runner's document, kind ``network``."""
    cases = plan_cases(modes, profile=profile)
    scenarios = {c: parse_scenario(c.scenario()) for c in cases}
    bench = BenchRun("network", cases, figures=FIGURES, checks=evaluate_checks,
                     settings={"ram_mib": RAM_MIB, "profile": profile,
                               "client_profile": profile, "memory": MEMORY_STRATEGY},
                     repeat=repeat, out=out, say=say)

    async def migrate(case: Case, index: int) -> Entry:
        record = await Orchestrator(scenarios[case], build_dir=build_dir, ui=ui).run()
        n = record.network
        bench.say(f"    {record.status}: outage {n.client_outage_ms} ms, RTT "
                  f"{n.rtt_before_ms} -> {n.rtt_after_ms} ms, lost around the switchover "
                  f"{n.udp_lost_switchover}, HTTP over 1 s {n.http_failed_1s}")
        return json.loads(record.model_dump_json())

    return await bench.run(migrate)
