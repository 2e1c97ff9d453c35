"""``wanmig bench faults`` as a table: one row per fault case, how it ended, what it cost."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .bench import checks_and_failures, num


def render_faults_bench(doc: dict[str, Any]) -> Group:
    table = Table(title="fault campaign, one run per case", header_style="bold")
    for col in ("case", "status", "VM lost", "client outage ms", "both running ms",
                "log gaps", "out of order", "disk match", "leftovers", "how it ended"):
        table.add_column(col, justify="left" if col in ("case", "status", "how it ended")
                         else "right")
    for entry in doc.get("results", []):
        c = entry.get("campaign") or {}
        memory = entry.get("memory") or {}
        recovered = memory.get("postcopy_recoveries") or []
        recovery = entry.get("recovery") or {}
        how = (f"postcopy recovered {len(recovered)}× (paused "
               f"{', '.join(str(round(r.get('paused_ms', 0) / 1000, 1)) for r in recovered)} s)"
               if recovered else
               f"wanmig recover from {recovery.get('stage')}: {recovery.get('status')} in "
               f"{num(recovery.get('took_ms'), '{:.0f}')} ms" if recovery else
               str(entry.get("error") or ""))
        table.add_row(Text(str((entry.get("bench") or {}).get("case"))),
                      Text(str(entry.get("status")),
                           style="green" if c.get("as_expected") else "red"),
                      "yes" if c.get("vm_lost") else "no",
                      num((entry.get("network") or {}).get("client_outage_ms"), "{:.0f}"),
                      num(c.get("both_running_ms"), "{:.0f}"), str(c.get("log_lost", "–")),
                      str(c.get("log_out_of_order", "–")),
                      {True: "yes", False: "NO"}.get(c.get("disk_match"), "–"),
                      str(len(c.get("leftovers") or [])), Text(how[:120]))
    return Group(table, *checks_and_failures(doc))
