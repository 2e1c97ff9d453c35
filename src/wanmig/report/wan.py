"""The ``wanmig bench wan`` results as a table: one row per link measured, then the ceiling."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .bench import figure, num, runs_of, runs_note


def render_wan_bench(doc: dict[str, Any]) -> Group:
    """Set values beside measured ones (medians; goodput with its range); a missed target ✗."""
    table = Table(title=f"emulated WAN: set vs measured{runs_note(doc)}", header_style="bold")
    for col in ("profile", "backend", "RTT set", "idle p50", "loaded p50/p99", "saturated p50",
                "rate set", "goodput", "loss set/meas. %", "CPU %", "targets"):
        table.add_column(col, justify="left" if col in ("profile", "backend") else "right")
    parts: list[Any] = [table]
    for row in doc.get("summary", []):
        runs = runs_of(doc, row["case"])
        first = runs[0] if runs else {}
        backend = "/".join(dict.fromkeys(str(r.get("backend")) for r in runs))
        if (first.get("bench") or {}).get("ceiling"):
            parts.append(Text(f"forwarder ceiling (no delay, no rate, {backend}): "
                              f"{figure(row, 'goodput_mbit', ranged=True)} Mbit/s at "
                              f"{figure(row, 'cpu_pct')}% CPU"))
            continue
        checks = [c for c in doc.get("checks", []) if c.get("case") == row["case"]]
        failed = [c["check"] for c in checks if c.get("ok") is False]
        verdict = Text("✗ " + ", ".join(failed), style="red") if failed else Text(
            "✓" if checks else "–", style="green")
        table.add_row(
            row["case"], backend, num(first.get("rtt_set_ms")),
            figure(row, "rtt_idle_p50_ms", "{:.2f}"),
            f"{figure(row, 'rtt_loaded_p50_ms', '{:.2f}')}/"
            f"{figure(row, 'rtt_loaded_p99_ms', '{:.2f}')}",
            figure(row, "rtt_saturated_p50_ms"), num(first.get("rate_set_mbit"), "{:g}"),
            figure(row, "goodput_mbit", ranged=True),
            f"{num(first.get('loss_set_pct'), '{:g}')}/"
            f"{figure(row, 'loss_measured_pct', '{:.3f}')}",
            figure(row, "cpu_pct"), verdict)
    return Group(*parts)
