"""The ``wanmig bench storage`` results as a table: one row per case, then the checks."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Group
from rich.table import Table

from .bench import checks_and_failures, figure, runs_of, runs_note


def render_storage_bench(doc: dict[str, Any]) -> Group:
    settings = doc.get("settings") or {}
    table = Table(title=f"storage strategies, {settings.get('base', '?')} base of "
                        f"{settings.get('disk_mib', '?')} MiB on "
                        f"{settings.get('profile', '?')}{runs_note(doc)}", header_style="bold")
    for col in ("case", "status", "ran", "in sync s", "ready s", "B running s", "MB on WAN",
                "MB copied", "MB allocated", "fixed s", "outage ms", "net outage ms", "write p50 ms",
                "write p99 ms", "throttle Mbit/s"):
        table.add_column(col, justify="left" if col in ("case", "status", "ran") else "right")
    for row in doc.get("summary", []):
        runs = runs_of(doc, row["case"])
        statuses = Counter(r.get("status", "?") for r in runs)
        # what auto chose, run by run
        ran = Counter((r.get("storage") or {}).get("chosen") or "" for r in runs)
        table.add_row(
            row["case"], ", ".join(s if len(statuses) == 1 else f"{s} ×{n}"
                                   for s, n in statuses.items()),
            ", ".join(c if len(ran) == 1 else f"{c} ×{n}" for c, n in ran.items() if c),
            figure(row, "total_ms", scale=1000, ranged=True),
            figure(row, "ready_ms", scale=1000), figure(row, "dest_running_ms", scale=1000),
            figure(row, "bytes_on_wire", "{:.2f}", scale=1e6, ranged=True),
            figure(row, "copied_bytes", scale=1e6), figure(row, "disk_bytes", scale=1e6),
            figure(row, "fixed_ms", scale=1000),
            figure(row, "outage_ms", "{:.0f}", ranged=True),
            figure(row, "net_outage_ms", "{:.0f}", ranged=True),
            figure(row, "io_p50_ms", "{:.1f}"), figure(row, "io_p99_ms", "{:.0f}"),
            figure(row, "throttle_bps", "{:.2f}", scale=1e6 / 8))
    return Group(table, *checks_and_failures(doc))
