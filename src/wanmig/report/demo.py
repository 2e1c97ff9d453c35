"""The demo's comparison: QEMU's defaults and ``auto``, side by side, from its document."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .bench import checks_and_failures, runs_of


def _ran(entry: dict[str, Any]) -> str:
    """What a run was asked for, and what auto chose where it chose."""
    asked = (entry.get("scenario") or {})
    memory, storage = entry.get("memory") or {}, entry.get("storage") or {}
    chosen = (memory.get("decision") or {}).get("chosen")
    parts = [(asked.get("memory") or {}).get("strategy", memory.get("strategy", "?"))
             + (f" → {chosen}" if chosen else "")]
    if storage.get("strategy") not in (None, "none", "shared"):
        parts.append("disk " + storage["strategy"]
                     + (f" → {storage['chosen']}" if storage.get("chosen") else ""))
    return ", ".join(parts)


def _phase_ms(entry: dict[str, Any], name: str) -> float | None:
    return next((p["end_ms"] - p["start_ms"] for p in entry.get("phases") or []
                 if p.get("name") == name), None)


def _ms(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.0f} ms"


def render_demo(doc: dict[str, Any]) -> Group:
    settings = doc.get("settings") or {}
    table = Table(title=f"the same guest moved twice: {settings.get('ram_mib', '?')} MiB, "
                        f"{settings.get('workload', '?')}, WAN {settings.get('wan', '?')}, "
                        f"network {settings.get('network', '?')}", header_style="bold")
    for col in ("run", "ran", "status", "total time", "prepare (auto: survey)", "memory copy",
                "QEMU downtime", "client outage",
                "bytes on the WAN", "TCP kept", "disk log gaps"):
        table.add_column(col, justify="left" if col in ("run", "ran", "status") else "right")
    for case in ("defaults", "auto"):
        for entry in runs_of(doc, case):
            net, integrity = entry.get("network") or {}, entry.get("integrity") or {}
            wan = entry.get("wan_bytes")
            table.add_row(
                "QEMU's defaults" if case == "defaults" else "wanmig auto", _ran(entry),
                Text(str(entry.get("status")),
                     style="green" if entry.get("status") == "completed" else "red"),
                _ms(entry.get("total_ms")), _ms(_phase_ms(entry, "prepare")),
                _ms((entry.get("memory") or {}).get("total_ms")),
                _ms((entry.get("memory") or {}).get("downtime_ms")),
                _ms(net.get("client_outage_ms")),
                "–" if wan is None else f"{wan / 1e6:.1f} MB",
                {True: "yes", False: "NO"}.get(net.get("tcp_survived"), "–"),
                str(integrity.get("guest_log_gaps", "–")))
    return Group(table, *checks_and_failures(doc, "auto against QEMU's defaults",
                                             judged=False))
