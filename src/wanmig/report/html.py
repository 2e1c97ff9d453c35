"""One self-contained HTML file for a result record or a bench document.

``write_html(doc, path)`` takes the saved JSON (as parsed) only; the plots are PNGs
drawn by ``report.plots`` and embedded as data URIs, the tables are the terminal
report's own (the same rows, as HTML tables for a record; a bench's rich tables
exported with inline styles), so the file opens anywhere with nothing beside it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from ..fileio import atomic_write
from ..record import ResultRecord
from . import plots
from .bench import num
from .text import figure_rows, phase_rows, step_rows, wan_line

MS = "{:.0f} ms"

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.status-completed { color: #1a7f37; } .status-failed, .status-rolled_back { color: #b42318; }
.missing { color: #8a6d3b; font-style: italic; }
figure { margin: 1em 0; } figcaption { font-weight: bold; margin-bottom: 0.3em; }
img.plot { max-width: 100%; }
pre.rich { font-size: 0.8em; overflow-x: auto; }
"""


def _page(title: str, body: Iterable[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plot(plot: plots.Plot) -> str:
    title = html.escape(plot.title)
    if plot.png is None:
        return (f"<figure><figcaption>{title}</figcaption>"
                f"<p class=\"missing\">plot left out: {html.escape(plot.missing or '')}</p>"
                "</figure>")
    data = base64.b64encode(plot.png).decode()
    return (f"<figure><figcaption>{title}</figcaption><img class=\"plot\" alt=\"{title}\" "
            f"src=\"data:image/png;base64,{data}\"></figure>")


def record_html(rec: ResultRecord) -> str:
    name = rec.scenario.get("name", "?")
    head = [f"<h1>wanmig: {html.escape(str(name))}, <span class=\"status-{rec.status}\">"
            f"{html.escape(rec.status)}</span></h1>"]
    return _page(f"wanmig {name}", [*head, *_record_body(rec)])


def _record_body(rec: ResultRecord) -> list[str]:
    """One run: what ran, its plots, its figures, phases, switchover and auto's reasons."""
    body = [f"<p>run {html.escape(str(rec.run_id))}, started {html.escape(str(rec.started_at))}"
            f"; WAN {html.escape(wan_line(rec.wan))}; memory {html.escape(rec.memory.strategy)}"
            f", storage {html.escape(rec.storage.strategy)}, network "
            f"{html.escape(rec.network.mode)}</p>"]
    if rec.error:
        body.append(f"<p class=\"status-failed\">error: {html.escape(rec.error)}</p>")
    body += ["<h3>Over time</h3>", *(_plot(p) for p in plots.record_plots(rec)),
             "<h3>Key figures</h3>", _table(("figure", "value", "measured by"),
                                            figure_rows(rec)),
             "<h3>Phases</h3>", _table(("phase", "start", "duration"), phase_rows(rec))]
    steps = step_rows(rec)
    if steps:
        body += ["<h3>Switchover, from the source's STOP</h3>",
                 _table(("step", "at", "since the previous"), steps)]
    return body + _decision(rec)


def _decision(rec: ResultRecord) -> list[str]:
    """Where auto chose: every strategy's prediction and the reason (memory and disk)."""
    out = []
    d = rec.memory.decision or {}
    predictions = d.get("predictions") or []
    if d.get("reason") or predictions:
        out += ["<h3>Why auto chose " + html.escape(str(d.get("chosen", "?"))) + "</h3>",
                f"<p>{html.escape(str(d.get('reason', '')))}</p>"]
        out.append(_table(("strategy", "converges", "predicted total", "predicted outage"),
                          ((p.get("strategy", "?"), "yes" if p.get("converges") else "no",
                            num(p.get("total_ms"), MS), num(p.get("outage_ms"), MS))
                           for p in predictions if isinstance(p, dict))))
    s = rec.storage
    if s.chosen:
        out += [f"<h3>Why auto chose {html.escape(s.chosen)} for the disk</h3>",
                f"<p>{html.escape(str(s.reason))}</p>"]
        out.append(_table(("strategy", "prediction"),
                          ((p.get("strategy", "?"),
                            ", ".join(f"{k} {v}" for k, v in p.items() if k != "strategy"))
                           for p in s.predictions or [] if isinstance(p, dict))))
    return out


def bench_html(doc: dict[str, Any]) -> str:
    from . import render_bench  # the package's dispatcher; imported here to avoid a cycle

    kind = str(doc.get("kind"))
    console = Console(record=True, width=200, file=io.StringIO(), color_system="truecolor")
    console.print(render_bench(doc))
    tables = console.export_html(inline_styles=True,
                                 code_format="<pre class=\"rich\">{code}</pre>")
    settings = ", ".join(f"{k} {v}" for k, v in (doc.get("settings") or {}).items())
    seconds = doc.get("seconds")
    heading = "wanmig demo: QEMU's defaults and auto" if kind == "demo" else f"wanmig bench {kind}"
    body = [f"<h1>{html.escape(heading)}</h1>",
            f"<p>{html.escape(settings)}"
            + (f"; {seconds / 60:.1f} min" if isinstance(seconds, (int, float)) else "")
            + "</p>",
            *(_plot(p) for p in plots.bench_plots(doc)),
            "<h2>Tables</h2>", tables]
    if kind == "demo":   # each run's own plots and figures below the comparison
        for entry in doc.get("results") or []:
            rec = ResultRecord.model_validate(entry)
            body += [f"<h2>Run: {html.escape(str((entry.get('bench') or {}).get('case')))}"
                     "</h2>", *_record_body(rec)]
    return _page(heading, body)


def write_html(doc: dict[str, Any], path: Path) -> None:
    """The page for ``doc`` -- a bench document (it has ``kind``) or a result record --
    written by rename.  ValueError where ``doc`` is neither; OSError from writing."""
    if "kind" in doc:
        page = bench_html(doc)
    else:
        page = record_html(ResultRecord.model_validate(doc))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, page.encode())
