"""The ``wanmig bench wan`` results as a table: one row per link measured."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def render_wan_bench(result: dict[str, Any]) -> Group:
    """Set values beside measured ones; a failed target is marked with ✗."""
    table = Table(title="emulated WAN: set vs measured", header_style="bold")
    for col in ("profile", "backend", "RTT set", "idle p50", "loaded p50/p99", "saturated p50",
                "rate set", "goodput", "loss set/meas. %", "CPU %", "targets"):
        table.add_column(col, justify="left" if col in ("profile", "backend") else "right")
    for r in result.get("results", []):
        checks = r.get("checks") or {}
        failed = [name for name, ok in checks.items() if ok is False]
        verdict = Text("✗ " + ", ".join(failed), style="red") if failed else Text(
            "✓" if checks else "–", style="green")
        table.add_row(
            str(r.get("profile")), str(r.get("backend")), _num(r.get("rtt_set_ms")),
            _num(r.get("rtt_idle_p50_ms"), "{:.2f}"),
            f"{_num(r.get('rtt_loaded_p50_ms'), '{:.2f}')}/{_num(r.get('rtt_loaded_p99_ms'), '{:.2f}')}",
            _num(r.get("rtt_saturated_p50_ms")), _num(r.get("rate_set_mbit"), "{:g}"),
            _num(r.get("goodput_mbit")),
            f"{_num(r.get('loss_set_pct'), '{:g}')}/{_num(r.get('loss_measured_pct'), '{:.3f}')}",
            _num(r.get("cpu_pct")), verdict)
    parts: list[Any] = [table]
    ceiling = result.get("ceiling")
    if ceiling:
        parts.append(Text(f"forwarder ceiling (no delay, no rate): "
                          f"{_num(ceiling.get('goodput_mbit'))} Mbit/s at "
                          f"{_num(ceiling.get('cpu_pct'))}% CPU"))
    return Group(*parts)
