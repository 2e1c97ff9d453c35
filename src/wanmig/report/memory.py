"""The ``wanmig bench memory`` results as a table: one row per case, then the checks.

Each outage is shown beside the TCG floor the bench calibrated before its runs
(``settings.tcg_floor``, ``bench.floor``) and the outage less it: what the
migration added to what pausing and resuming the guest costs anyway.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Group
from rich.table import Table

from .bench import figure, runs_of, runs_note, verdict


def floor_note(doc: dict[str, Any]) -> str:
    """``TCG floor 41.2 ms (median of 5 cycles, 38.0–47.9)`` from the settings, or why none."""
    floor = (doc.get("settings") or {}).get("tcg_floor")
    if not floor:
        return "TCG floor not measured"
    f = floor.get("floor") or {}
    if not f.get("n"):
        return "TCG floor: no cycle"
    return (f"TCG floor {f['median']:.1f} ms (median of {f['n']} cycles, "
            f"{f['min']:.1f}–{f['max']:.1f})")


def render_memory_bench(doc: dict[str, Any]) -> Group:
    table = Table(title=f"memory strategies × workloads{runs_note(doc)}; {floor_note(doc)}",
                  header_style="bold")
    for col in ("case", "ran", "status", "converged", "total s", "downtime ms", "outage ms",
                "floor ms", "outage-floor ms", "STOP→RESUME ms", "RESUME→answer ms",
                "MiB (QEMU)", "MiB on wire", "rounds",
                "postcopy faults", "predicted s"):
        table.add_column(col, justify="left" if col in ("case", "ran", "status") else "right")
    for row in doc.get("summary", []):
        runs = runs_of(doc, row["case"])
        ran = dict.fromkeys(str((r.get("memory") or {}).get("strategy")) for r in runs)
        statuses = Counter(r.get("status", "?") for r in runs)
        converged = sum(1 for r in runs if (r.get("memory") or {}).get("converged"))
        table.add_row(
            row["case"], "/".join(ran),
            ", ".join(s if len(statuses) == 1 else f"{s} ×{n}" for s, n in statuses.items()),
            "yes" if converged == len(runs) else ("no" if not converged
                                                  else f"{converged}/{len(runs)}"),
            figure(row, "total_ms", scale=1000, ranged=True),
            figure(row, "downtime_ms", "{:.0f}", ranged=True),
            figure(row, "outage_ms", "{:.0f}", ranged=True),
            figure(row, "floor_ms", "{:.0f}"),
            figure(row, "outage_over_floor_ms", "{:.0f}", ranged=True),
            figure(row, "held_ms", "{:.0f}", ranged=True),
            figure(row, "answer_ms", "{:.0f}", ranged=True),
            figure(row, "bytes", scale=2**20), figure(row, "wire_bytes", scale=2**20),
            figure(row, "rounds", "{:g}"), figure(row, "postcopy_requests", "{:g}"),
            figure(row, "predicted_total_ms", scale=1000))
    checks = Table(title="targets", header_style="bold")
    for col in ("check", "result", "detail"):
        checks.add_column(col)
    for c in doc.get("checks", []):
        checks.add_row(c["check"], verdict(c.get("ok")), c.get("detail", ""))
    return Group(table, checks)
