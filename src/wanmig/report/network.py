"""The ``wanmig bench network`` results as a table: one row per mode, then the checks."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

from .bench import checks_and_failures, figure, runs_note


def render_network_bench(doc: dict[str, Any]) -> Group:
    settings = doc.get("settings") or {}
    table = Table(title=f"network modes, {settings.get('memory', '?')} memory on "
                        f"{settings.get('profile', '?')} (client's links "
                        f"{settings.get('client_profile', '?')}){runs_note(doc)}",
                  header_style="bold")
    columns = {"outage ms": ("outage_ms", "{:.0f}"), "TCP kept": ("tcp_survived", "{:.0f}"),
               "new conn ms": ("new_conn_ms", "{:.0f}"),
               "RTT before ms": ("rtt_before_ms", "{:.1f}"),
               "RTT after ms": ("rtt_after_ms", "{:.1f}"),
               "lost at switch": ("udp_lost_switchover", "{:.0f}"),
               "lost in run": ("udp_lost", "{:.0f}"),
               "HTTP > 1 s": ("http_failed_1s", "{:.0f}"),
               "route moved ms": ("route_switch_ms", "{:.0f}"),
               "DNS switched ms": ("dns_switch_ms", "{:.0f}"),
               "log gaps": ("log_gaps", "{:.0f}")}
    table.add_column("mode")
    for col in columns:
        table.add_column(col, justify="right")
    for row in doc.get("summary", []):
        table.add_row(row["case"], *(figure(row, name, fmt, ranged=name == "outage_ms")
                                     for name, fmt in columns.values()))
    return Group(table, *checks_and_failures(doc))
