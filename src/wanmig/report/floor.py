"""The ``wanmig bench floor`` calibration as a table: one row per stop/cont cycle."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

from .bench import num


def render_floor_bench(doc: dict[str, Any]) -> Group:
    result = doc.get("result") or {}
    floor = result.get("floor") or {}
    title = "TCG floor: client's largest echo gap less QEMU's STOP→RESUME"
    if floor.get("n"):
        title += (f"; median {floor['median']:.1f} ms ({floor['min']:.1f}–{floor['max']:.1f}, "
                  f"{floor['n']} valid cycles, {result.get('accel')}, "
                  f"{result.get('ram_mib')} MiB)")
    table = Table(title=title, header_style="bold")
    for col in ("cycle", "asked ms", "paused ms", "gap ms", "floor ms", "stop ms", "cont ms",
                "gap began after stop ms", "ended after RESUME ms", "pause's gap"):
        table.add_column(col, justify="right")
    for i, c in enumerate(result.get("cycles") or [], 1):
        table.add_row(str(i), num(c.get("nominal_pause_ms"), "{:.0f}"), num(c.get("paused_ms")),
                      num(c.get("gap_ms")), num(c.get("floor_ms")), num(c.get("stop_ms")),
                      num(c.get("cont_ms")), num(c.get("gap_vs_stop_ms")),
                      num(c.get("reply_after_resume_ms")),
                      "yes" if c.get("valid") else "no: not counted")
    return Group(table)
