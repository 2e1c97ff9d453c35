"""What every bench table shares: cells drawn from a bench document's summary and results.

A document is the runner's (``wanmig.bench.runner``): ``summary`` holds each
case's figures as median, min, max and n; ``results`` the runs themselves.
A noisy figure is shown as ``median (min–max)`` when its runs differ.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text


def num(value: Any, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def figure(row: dict[str, Any], name: str, fmt: str = "{:.1f}", *, scale: float = 1.0,
           ranged: bool = False) -> str:
    """One figure of a summary row: its median, and with ``ranged`` its range if runs differ."""
    fig = row["figures"].get(name) or {}
    if not fig.get("n"):
        return "–"
    text = fmt.format(fig["median"] / scale)
    if ranged and fig["n"] > 1 and fig["min"] != fig["max"]:
        text += f" ({fmt.format(fig['min'] / scale)}–{fmt.format(fig['max'] / scale)})"
    return text


def runs_of(doc: dict[str, Any], case: str) -> list[dict[str, Any]]:
    """The result entries of one case, in the order they ran."""
    return [r for r in doc.get("results", []) if (r.get("bench") or {}).get("case") == case]


def verdict(ok: bool | None) -> Text:
    return Text("–" if ok is None else ("✓" if ok else "✗"),
                style="green" if ok else ("red" if ok is False else ""))


def runs_note(doc: dict[str, Any]) -> str:
    """``, median (range) of N runs`` for a table title when cases were repeated."""
    repeat = (doc.get("settings") or {}).get("repeat", 1)
    return f", median (range) of {repeat} runs" if repeat > 1 else ""


def checks_and_failures(doc: dict[str, Any], title: str = "targets", *,
                        judged: bool = True) -> list[Table]:
    """The targets' table (``judged``: with each verdict; else comparisons, no verdict),
    and the table of runs that did not complete (when any)."""
    rows = doc.get("checks", [])
    checks = Table(title=title, header_style="bold")
    for col in ("check", "result", "detail") if judged else ("comparison", "detail"):
        checks.add_column(col)
    for c in rows:
        checks.add_row(Text(c["check"]), *([verdict(c.get("ok"))] if judged else []),
                       Text(c.get("detail", "")))
    failed = [r for r in doc.get("results", []) if r.get("status") != "completed"]
    if not failed:
        return [checks]
    errors = Table(title="why runs did not complete", header_style="bold")
    errors.add_column("case")
    errors.add_column("error")
    for r in failed:
        errors.add_row((r.get("bench") or {}).get("case", "?"), Text(str(r.get("error"))))
    return [checks, errors]
