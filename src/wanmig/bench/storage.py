"""``wanmig bench storage``: every storage strategy on the same guest and WAN.

The guest's disk is the ``debian`` base (a real Debian root, ~200 MB
allocated in 2 GiB) with an overlay of what the guest wrote; memory moves
with ``precopy-tuned`` in every case, so the storage strategies differ
alone.  Cases, each with verify on (both disks compared before B runs):

* ``mirror`` -- libvirt's ``--copy-storage-all`` with its defaults, the baseline;
* ``mirror-sync`` -- the same with ``--copy-storage-synchronous-writes``;
* ``precopy`` -- ours: A's overlay over B's own base, in dirty-bitmap passes;
* ``postcopy`` -- B runs at once, A's overlay read over NBD, streamed after;
* ``hybrid`` -- A's writes so far in bulk, the later ones read by B, streamed after;
* ``auto`` -- the model's choice among them;
* ``hybrid-wancopy``, ``postcopy-wancopy`` -- the same with wanmig's own
  transport for the frozen images (``storage.wancopy``);

each idle and with the guest rewriting its disk (``disk-N``: ``disk_write_mbps``
N MB/s); then ``postcopy`` idle on 1 and 4 GiB disks (``postcopy-1g``, ``-4g``):
its time to B running must not grow with the disk; and ``mirror-sync`` and
``hybrid-wancopy`` idle without TLS (what TLS costs).  Each record keeps its storage block (total, ready, time to B running,
bytes on the WAN, what the disk holds, the write throttle, the guest's write
latency), the client's outage and the integrity checks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import parse_scenario
from ..context import Ui
from ..errors import ConfigError
from ..model.storage import CANDIDATES
from ..orchestrator import Orchestrator
from .runner import BenchRun, Entry, Figures, Say, medians

PROFILE = "continental"
RAM_MIB = 256
DISK_MIB = 2048
DEFAULT_REPEAT = 1
#: A copy that is not ready by then is a result (libvirt's mirror need never be).
STORAGE_TIMEOUT_S = 120.0
STRATEGIES: dict[str, dict[str, Any]] = {
    "mirror": {"strategy": "mirror"},
    "mirror-sync": {"strategy": "mirror", "synchronous_writes": True},
    "precopy": {"strategy": "precopy"},
    # QEMU's transport for their frozen images (NBD, nbdcopy), beside wancopy's below
    "postcopy": {"strategy": "postcopy", "transport": "qemu"},
    "hybrid": {"strategy": "hybrid", "transport": "qemu"},
    "auto": {"strategy": "auto"},
    # wanmig's own transport (zero ranges, dedup against B's base, zstd, TLS streams)
    # for the frozen images: hybrid's bulk, the postcopy/hybrid fetch
    "hybrid-wancopy": {"strategy": "hybrid", "transport": "wancopy"},
    "postcopy-wancopy": {"strategy": "postcopy", "transport": "wancopy"},
}
#: Cases beyond the matrix, idle: postcopy on other disk sizes (time to B running must
#: not grow), and the biggest copy without TLS (what TLS costs).
SIZED: dict[str, tuple[str, int]] = {"postcopy-1g": ("postcopy", 1024),
                                     "postcopy-4g": ("postcopy", 4096)}
INSECURE = {"mirror-sync-insecure": "mirror-sync",
            "hybrid-wancopy-insecure": "hybrid-wancopy"}
#: Where each copy without TLS runs by default: where its pair copies a real amount
#: (mirror-sync's idle copy is the 202 MB base; hybrid-wancopy's idle bulk is 0.25 MB,
#: all handshake: +15.8 % on 0.9 s in bench storage run 20, -1.2 % on disk-5's in run 19).
INSECURE_WORKLOAD = {"mirror-sync-insecure": "idle", "hybrid-wancopy-insecure": "disk-5"}
TLS_COST_SHARE = 0.10
#: Each workload: the guest's ``[vm]`` settings and the link's overrides.  ``disk-5``
#: rewrites a 16 MiB file at 5 MB/s on the 100 Mbit/s link (40 % of what it drains);
#: ``fast-10`` rewrites it at 10 MB/s over 40 Mbit/s: faster than the link drains it;
#: ``app``: the guest boots from the Debian root and the client places 10 orders/s
#: (nginx, the app tier, Redis on the disk).
WORKLOADS: dict[str, dict[str, Any]] = {
    "idle": {},
    "disk-5": {"vm": {"disk_write_mbps": 5.0}},
    "fast-10": {"vm": {"disk_write_mbps": 10.0}, "wan": {"rate_mbit": 40}},
    "app": {"vm": {"root": "debian", "workload": "app", "web_rps": 10}},
}
#: What a copy's total may take beyond its bytes at the link's rate: this share on the
#: transfer time, plus the strategy's fixed cost measured in the same bench (its idle
#: case: total less its bytes at the link's rate).
SCALE_SHARE = 1.1
BASELINE = "mirror"
FALLBACK = "mirror-sync"
BYTES_SHARE = 0.2          # the best strategy's bytes on the WAN / the baseline's
POSTCOPY_SLACK_MS = 5000.0 # postcopy: B runs within memory's total time + this


@dataclass(frozen=True)
class Case:
    strategy: str
    workload: str
    profile: str = PROFILE

    @property
    def name(self) -> str:
        return f"{self.strategy}/{self.workload}"

    @property
    def labels(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "workload": self.workload, "profile": self.profile}

    def scenario(self) -> dict[str, Any]:
        strategy = INSECURE.get(self.strategy, self.strategy)
        strategy, disk_mib = SIZED.get(strategy, (strategy, DISK_MIB))
        workload = WORKLOADS[self.workload]
        return {"name": f"bench-storage-{self.strategy}-{self.workload}",
                "vm": {"ram_mib": RAM_MIB, "disk_mib": disk_mib, "base": "debian",
                       **workload.get("vm", {})},
                "memory": {"strategy": "precopy-tuned", "verify": True,
                           "tls": self.strategy not in INSECURE},
                "storage": {"verify": True, "timeout_s": STORAGE_TIMEOUT_S,
                            **STRATEGIES[strategy]},
                "wan": {"profile": self.profile, **workload.get("wan", {})}}


def plan_cases(strategies: Sequence[str] | None = None,
               workloads: Sequence[str] | None = None, *, profile: str = PROFILE) -> list[Case]:
    """Every strategy × workload, then (by default) the sized postcopy cases (idle) and
    the copies without TLS (``INSECURE_WORKLOAD``)."""
    known = [*STRATEGIES, *SIZED, *INSECURE]
    for s in strategies or ():
        if s not in known:
            raise ConfigError(f"unknown storage case {s!r}; known: {', '.join(known)}",
                              field="strategy")
    for w in workloads or ():
        if w not in WORKLOADS:
            raise ConfigError(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}",
                              field="workload")
    if strategies:
        return [Case(s, w, profile) for s in strategies for w in (workloads or WORKLOADS)]
    return ([Case(s, w, profile) for s in STRATEGIES for w in (workloads or WORKLOADS)]
            + [Case(s, "idle", profile) for s in SIZED]
            + [Case(s, INSECURE_WORKLOAD[s], profile) for s in INSECURE])


def _storage(entry: Entry) -> dict[str, Any]:
    return entry.get("storage") or {}


def _rate(entry: Entry) -> float | None:
    link = (entry.get("wan") or {}).get("link") or {}
    return link["rate_mbit"] * 1e3 / 8 if link.get("rate_mbit") else None   # bytes per ms


def _transfer_ms(entry: Entry) -> float | None:
    """The bytes that crossed while the disk moved -- the disk's and the memory's, which
    share the link within the storage total -- at the link's rate."""
    s, rate = _storage(entry), _rate(entry)
    if not s.get("bytes_on_wire") or not rate:
        return None
    memory = (entry.get("memory") or {}).get("wire_bytes") or 0
    return round((s["bytes_on_wire"] + memory) / rate, 1)


def _less(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


def _fixed_ms(entry: Entry) -> float | None:
    """The copy's time beyond its bytes at the link's rate: what it costs besides moving data."""
    return _less(_storage(entry).get("total_ms"), _transfer_ms(entry))


def _own_ms(entry: Entry) -> float | None:
    """The disk's own time: the storage total less the memory copy's (which it encloses,
    and whose time is the memory strategy's: ``bench memory`` judges it)."""
    return _less(_storage(entry).get("total_ms"), (entry.get("memory") or {}).get("total_ms"))


def _own_transfer_ms(entry: Entry) -> float | None:
    """The disk's bytes on the WAN at the link's rate."""
    wire, rate = _storage(entry).get("bytes_on_wire"), _rate(entry)
    return round(wire / rate, 1) if wire and rate else None


def _own_fixed_ms(entry: Entry) -> float | None:
    return _less(_own_ms(entry), _own_transfer_ms(entry))


def _net_outage(entry: Entry) -> float | None:
    """The client's outage less the verify pauses (RAM and disk compared before B ran)."""
    outage = (entry.get("network") or {}).get("client_outage_ms")
    if outage is None:
        return None
    i = entry.get("integrity") or {}
    return round(outage - (i.get("memory_verify_ms") or 0) - (i.get("disk_verify_ms") or 0), 1)


FIGURES: Figures = {
    "completed": lambda r: 1.0 if r.get("status") == "completed" else 0.0,
    "total_ms": lambda r: _storage(r).get("total_ms"),
    "ready_ms": lambda r: _storage(r).get("ready_ms"),
    "dest_running_ms": lambda r: _storage(r).get("time_to_dest_running_ms"),
    "bytes_on_wire": lambda r: _storage(r).get("bytes_on_wire"),
    "copied_bytes": lambda r: _storage(r).get("copied_bytes"),
    "disk_bytes": lambda r: _storage(r).get("disk_bytes"),
    "transfer_ms": _transfer_ms,
    "fixed_ms": _fixed_ms,
    "own_ms": _own_ms,
    "own_transfer_ms": _own_transfer_ms,
    "own_fixed_ms": _own_fixed_ms,
    "outage_ms": lambda r: (r.get("network") or {}).get("client_outage_ms"),
    "net_outage_ms": _net_outage,
    "io_p50_ms": lambda r: _storage(r).get("guest_io_p50_ms"),
    "io_p99_ms": lambda r: _storage(r).get("guest_io_p99_ms"),
    "throttle_bps": lambda r: _storage(r).get("write_throttle_bps"),
    "bulk_bytes": lambda r: _storage(r).get("bulk_bytes"),
    "zero_skipped": lambda r: _storage(r).get("zero_bytes_skipped"),
    "dedup_skipped": lambda r: _storage(r).get("dedup_bytes_skipped"),
    "compress_ratio": lambda r: _storage(r).get("compress_ratio"),
    "streamed_bytes": lambda r: _storage(r).get("streamed_bytes"),
    "memory_total_ms": lambda r: (r.get("memory") or {}).get("total_ms"),
    "boot_ms": lambda r: (r.get("vm") or {}).get("boot_ms"),
    "app_orders": lambda r: (r.get("integrity") or {}).get("app_orders"),
    "disk_mismatch": lambda r: (None if (r.get("integrity") or {}).get("disk_match") is None
                                else float(not r["integrity"]["disk_match"])),
    # what ran: auto's choice (1 or 0 per run; the median is the majority's) and whether
    # wancopy carried the frozen images
    **{f"chose_{s}": (lambda r, s=s: None if not _storage(r).get("chosen")
                      else float(_storage(r)["chosen"] == s)) for s in CANDIDATES},
    "wancopy": lambda r: (None if not _storage(r).get("transport")
                          else float(_storage(r)["transport"] == "wancopy")),
}


#: The two scaling checks: the run's storage total with the memory's bytes in it, and
#: the disk's own time (the memory's taken out); each (label, time, transfer, fixed).
SCALINGS = (("total ≤ {share:g} × bytes/rate + fixed", "total_ms", "transfer_ms", "fixed_ms"),
            ("disk's own ≤ {share:g} × disk bytes/rate + fixed", "own_ms", "own_transfer_ms",
             "own_fixed_ms"))


def _ran(case_strategy: str, m: dict[str, Any]) -> str | None:
    """The bench case whose idle run has the fixed cost of what ``m`` ran: its own, or
    for ``auto`` the strategy it chose (most often), on the transport it ran on."""
    if case_strategy != "auto":
        return case_strategy
    chosen = next((s for s in CANDIDATES if m.get(f"chose_{s}") == 1.0), None)
    if chosen is None:
        return None
    return f"{chosen}-wancopy" if m.get("wancopy") == 1.0 else chosen


def _scaling_checks(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each case that moved more than the idle case of what it ran: its time ≤
    SCALE_SHARE × its transfer time + that idle case's fixed cost (both from this bench;
    ``auto`` is held to the idle case of the strategy it chose)."""
    checks = []
    for label, time_key, transfer_key, fixed_key in SCALINGS:
        for case, m in rows.items():
            strategy, _, workload = case.partition("/")
            ran = _ran(strategy, m)
            idle = rows.get(f"{ran}/idle") if ran else None
            if (workload == "idle" or idle is None or idle.get(fixed_key) is None
                    or m.get(time_key) is None or m.get(transfer_key) is None):
                continue
            whose = ("idle's fixed cost" if ran == strategy
                     else f"{ran}/idle's fixed cost: what it ran")
            bound = SCALE_SHARE * m[transfer_key] + idle[fixed_key]
            checks.append({"check": f"{case}: {label.format(share=SCALE_SHARE)}",
                           "ok": m[time_key] <= bound,
                           "detail": f"{m[time_key] / 1000:.2f} s vs {SCALE_SHARE:g} × "
                                     f"{m[transfer_key] / 1000:.2f} s + "
                                     f"{idle[fixed_key] / 1000:.2f} s ({whose})"})
    return checks


def evaluate_checks(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    rows = {row["case"]: medians(row) for row in summary}
    for workload in WORKLOADS:
        base = rows.get(f"{BASELINE}/{workload}")
        done = {case: m for case, m in rows.items()
                if case.endswith(f"/{workload}") and m.get("completed") and m.get("bytes_on_wire")}
        if not done:
            continue
        best_case, best = min(done.items(), key=lambda kv: kv[1]["bytes_on_wire"])
        name, why = BASELINE, ""
        if base is None or not base.get("completed"):
            # libvirt's default mirror need never be ready: its synchronous-writes mode
            # is what an operator falls back to, and the baseline then
            name, base = FALLBACK, rows.get(f"{FALLBACK}/{workload}")
            why = f"{BASELINE} did not complete; against {FALLBACK}: "
            if base is None or not base.get("completed") or not base.get("bytes_on_wire"):
                checks.append({"check": f"best bytes on the WAN ≤ {BYTES_SHARE:g} × "
                                        f"{BASELINE}'s ({workload})", "ok": None,
                               "detail": f"no baseline completed; best {best_case} "
                                         f"{best['bytes_on_wire'] / 1e6:.2f} MB"})
                continue
        share = best["bytes_on_wire"] / base["bytes_on_wire"]
        checks.append({"check": f"best bytes on the WAN ≤ {BYTES_SHARE:g} × {BASELINE}'s "
                                f"({workload})", "ok": share <= BYTES_SHARE,
                       "detail": f"{why}{best_case} {best['bytes_on_wire'] / 1e6:.2f} MB vs "
                                 f"{name} {base['bytes_on_wire'] / 1e6:.1f} MB ({share:.3f}×)",
                       "limit": {"figure": "bytes_on_wire", "case": best_case,
                                 "value": BYTES_SHARE * base["bytes_on_wire"]}})
    for case, m in rows.items():
        if not case.startswith("postcopy") or m.get("dest_running_ms") is None:
            continue
        bound = (m.get("memory_total_ms") or 0.0) + POSTCOPY_SLACK_MS
        checks.append({"check": f"{case}: B running ≤ memory total + "
                                f"{POSTCOPY_SLACK_MS / 1000:g} s",
                       "ok": m["dest_running_ms"] <= bound,
                       "detail": f"{m['dest_running_ms'] / 1000:.1f} s vs "
                                 f"{(m.get('memory_total_ms') or 0) / 1000:.1f} s + "
                                 f"{POSTCOPY_SLACK_MS / 1000:g} s"})
    for insecure, secure in INSECURE.items():
        # on the workload where the pair copied the most: TLS's cost is per byte, and a
        # copy of a few hundred kB is all fixed cost
        pairs = [(w, rows[f"{secure}/{w}"], rows[f"{insecure}/{w}"]) for w in WORKLOADS
                 if rows.get(f"{secure}/{w}", {}).get("ready_ms")
                 and rows.get(f"{insecure}/{w}", {}).get("ready_ms")]
        if pairs:
            w, a, b = max(pairs, key=lambda p: p[1].get("copied_bytes") or 0)
            cost = a["ready_ms"] / b["ready_ms"] - 1
            checks.append({"check": f"TLS costs ≤ {TLS_COST_SHARE:.0%} of the disk copy "
                                    f"({secure}, {w})", "ok": cost <= TLS_COST_SHARE,
                           "detail": f"copy {a['ready_ms'] / 1000:.1f} s with TLS, "
                                     f"{b['ready_ms'] / 1000:.1f} s without ({cost:+.1%})"})
    checks += _scaling_checks(rows)
    mism = [case for case, m in rows.items() if m.get("disk_mismatch")]
    checks.append({"check": "disks match in every verified run", "ok": not mism,
                   "detail": f"{len(rows)} cases; mismatched: {', '.join(mism) or 'none'}"})
    return checks


async def run_storage_bench(*, strategies: Sequence[str] | None = None,
                            workloads: Sequence[str] | None = None, profile: str = PROFILE,
                            repeat: int = DEFAULT_REPEAT, out: Path | None = None,
                            build_dir: Path | None = None, ui: Ui | None = None,
                            say: Say | None = None) -> dict[str, Any]:
    """The matrix, each case ``repeat`` times; the runner's document, kind ``storage``."""
    cases = plan_cases(strategies, workloads, profile=profile)
    scenarios = {c: parse_scenario(c.scenario()) for c in cases}
    bench = BenchRun("storage", cases, figures=FIGURES, checks=evaluate_checks,
                     settings={"ram_mib": RAM_MIB, "disk_mib": DISK_MIB, "profile": profile,
                               "base": "debian", "storage_timeout_s": STORAGE_TIMEOUT_S},
                     repeat=repeat, out=out, say=say)

    async def migrate(case: Case, index: int) -> Entry:
        record = await Orchestrator(scenarios[case], build_dir=build_dir, ui=ui).run()
        s = record.storage
        bench.say(f"    {record.status}: storage {s.strategy} in sync after {s.total_ms} ms, "
                  f"{(s.bytes_on_wire or 0) / 1e6:.2f} MB on the WAN, outage "
                  f"{record.network.client_outage_ms} ms"
                  + (f"; {record.error}" if record.error else ""))
        return json.loads(record.model_dump_json())

    return await bench.run(migrate)
