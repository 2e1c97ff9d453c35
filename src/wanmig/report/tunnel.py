"""``wanmig bench tunnel`` as a table: each tunnel's client goodput and CPU, side by side."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

from .bench import checks_and_failures, figure, runs_of, runs_note


def render_tunnel_bench(doc: dict[str, Any]) -> Group:
    settings = doc.get("settings") or {}
    table = Table(title=f"the stretched segment's tunnel, client goodput over "
                        f"{settings.get('profile')} ({settings.get('rate_mbit')} Mbit/s)"
                        f"{runs_note(doc)}", header_style="bold")
    for col in ("tunnel", "what", "goodput Mbit/s (range)", "tunnel CPU % of a core",
                "set up ms"):
        table.add_column(col, justify="left" if col in ("tunnel", "what") else "right")
    for row in doc.get("summary", []):
        runs = runs_of(doc, row["case"])
        table.add_row(row["case"], str(runs[0].get("tunnel")) if runs else "–",
                      figure(row, "goodput_mbit", "{:.1f}", ranged=True),
                      figure(row, "tunnel_cpu_pct", "{:.0f}"), figure(row, "setup_ms", "{:.0f}"))
    return Group(table, *checks_and_failures(doc))
