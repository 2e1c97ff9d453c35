"""The ``wanmig bench memory`` results as a table: one row per migration, then the checks."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .wan import _num


def render_memory_bench(result: dict[str, Any]) -> Group:
    table = Table(title="memory strategies × workloads", header_style="bold")
    for col in ("case", "ran", "status", "converged", "total s", "downtime ms", "outage ms",
                "MiB (QEMU)", "MiB on wire", "rounds", "postcopy faults", "predicted s"):
        table.add_column(col, justify="left" if col in ("case", "ran", "status") else "right")
    for r in result.get("results", []):
        mem, net = r.get("memory") or {}, r.get("network") or {}
        predicted = ((mem.get("decision") or {}).get("predicted") or {}).get("total_ms")
        table.add_row(
            r.get("bench", {}).get("case", "?"), str(mem.get("strategy")), r.get("status", "?"),
            "yes" if mem.get("converged") else "no",
            _num(mem.get("total_ms") and mem["total_ms"] / 1000),
            _num(mem.get("downtime_ms"), "{:.0f}"), _num(net.get("client_outage_ms"), "{:.0f}"),
            _num(mem.get("bytes") and mem["bytes"] / 2**20),
            _num(mem.get("wire_bytes") and mem["wire_bytes"] / 2**20),
            _num(mem.get("rounds"), "{:d}"), _num(mem.get("postcopy_requests"), "{:d}"),
            _num(predicted and predicted / 1000))
    checks = Table(title="targets", header_style="bold")
    for col in ("check", "result", "detail"):
        checks.add_column(col)
    for c in result.get("checks", []):
        ok = c.get("ok")
        checks.add_row(c["check"], Text("–" if ok is None else ("✓" if ok else "✗"),
                                        style="green" if ok else ("red" if ok is False else "")),
                       c.get("detail", ""))
    return Group(table, checks)
