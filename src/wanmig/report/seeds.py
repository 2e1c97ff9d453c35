"""``wanmig bench seeds`` as a table: each seed paper, its figure, and wanmig's beside it."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..bench.seeds import LABELS
from .bench import checks_and_failures, runs_of



def _s(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def _cell(doc: dict[str, Any], case: str, compare: list[str]) -> str:
    """One run's figures (the median of its runs, range where they differ); what it ran."""
    runs = runs_of(doc, case)
    if not runs:
        return "not run"
    row = next((r for r in doc.get("summary", []) if r["case"] == case), {"figures": {}})
    parts = []
    for name in dict.fromkeys([*compare, "outage_ms", "total_ms"]):
        fig = row["figures"].get(name) or {}
        if fig.get("n"):
            text = f"{LABELS.get(name, name)} {_s(fig['median'])}"
            if fig["n"] > 1 and fig["min"] != fig["max"]:
                text += f" ({_s(fig['min'])}–{_s(fig['max'])})"
            parts.append(text)
    failed = sum(r.get("status") != "completed" for r in runs)
    if failed:
        parts.append(f"{failed} of {len(runs)} runs did not complete")
    last = runs[-1]
    chosen = [((last.get("memory") or {}).get("decision") or {}).get("chosen"),
              (last.get("storage") or {}).get("chosen")]
    ran = ", ".join(c for c in chosen if c)
    return "; ".join(parts) + (f" (auto ran {ran})" if ran else "")


def render_seeds_bench(doc: dict[str, Any]) -> Group:
    table = Table(title="the seed papers on this testbed", header_style="bold",
                  show_lines=True)
    for col in ("paper", "technique", "its setting", "its figure", "here",
                "wanmig, the paper's technique", "wanmig's best"):
        table.add_column(col, overflow="fold")
    for p in doc.get("papers") or []:
        cells = ([p["here"], _cell(doc, f"{p['paper']}/technique", p["compare"]),
                  _cell(doc, f"{p['paper']}/best", p["compare"])] if p.get("implemented")
                 else ["–", f"not implemented: {p['missing']}", "–"])
        table.add_row(*(Text(c) for c in (p["citation"], p["technique"], p["setting"],
                                          p["figure"], *cells)))
    return Group(table, *checks_and_failures(doc, "wanmig's best against the paper's "
                                                  "technique", judged=False))
