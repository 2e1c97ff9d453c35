"""The plots of the HTML report, drawn with matplotlib from saved JSON only.

Each function takes a record (or a bench document) and returns a ``Plot``: a PNG as
bytes and its title, or, where the saved JSON lacks what the plot needs, the reason
it was left out (``Plot.missing``): a record written before wanmig kept its series
still renders, with one line in place of each plot it cannot draw.

Times are in seconds on the phases' clock (0 = ``prepare`` began), the same clock as
the record's ``phases`` and ``series``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: draw into memory only

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from ..record import ResultRecord  # noqa: E402

#: One colour per phase, in ``record.PHASES`` order (and for any other name, grey).
PHASE_COLOURS = {"prepare": "#d9d9d9", "storage": "#c6dbef", "memory": "#fdd0a2",
                 "switchover": "#fb6a4a", "redirect": "#c7e9c0", "finish": "#e5e5e5"}
WIDTH_IN, DPI = 9.0, 100
#: A bench plot whose largest bar is this many times its smallest is drawn on a log scale.
LOG_ABOVE = 50
NO_SERIES = ("this record has no series: it was written before wanmig kept what the plots "
             "need")


@dataclass(frozen=True)
class Plot:
    """A drawn figure (``png``) or why there is none (``missing``)."""

    title: str
    png: bytes | None = None
    missing: str | None = None


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _figure(rows: int = 1, height: float = 2.6) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(rows, 1, figsize=(WIDTH_IN, height * rows), sharex=True,
                             squeeze=False)
    return fig, [ax for (ax,) in axes]


def _phase_bands(ax: Axes, rec: ResultRecord) -> None:
    """The phases as coloured bands behind a plot, and where A stopped and B resumed."""
    for ph in rec.phases:
        ax.axvspan(ph.start_ms / 1000, ph.end_ms / 1000, alpha=0.45, lw=0,
                   color=PHASE_COLOURS.get(ph.name, "#eeeeee"))
    for at in ((rec.series or {}).get("marks") or {}).values():
        ax.axvline(at / 1000, color="black", lw=0.8, ls="--")


def timeline(rec: ResultRecord) -> Plot:
    """The phases as bars, one row each, with their durations; where A stopped and B
    resumed as dashed lines."""
    title = "phases"
    if not rec.phases:
        return Plot(title, missing="the run ended before its first phase")
    fig, (ax,) = _figure(height=0.35 * len(rec.phases) + 0.9)
    span = rec.phases[-1].end_ms - rec.phases[0].start_ms
    for row, ph in enumerate(rec.phases):
        length = ph.end_ms - ph.start_ms
        ax.barh(row, max(length, span / 500) / 1000, left=ph.start_ms / 1000, height=0.6,
                color=PHASE_COLOURS.get(ph.name, "#eeeeee"), edgecolor="black", lw=0.5)
        ax.text(ph.end_ms / 1000 + span / 200_000, row, f" {length / 1000:.2f} s",
                va="center", fontsize=7)
    for name, at in ((rec.series or {}).get("marks") or {}).items():
        ax.axvline(at / 1000, color="black", lw=0.8, ls="--")
        ax.annotate(name, (at / 1000, 1.0), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=7)
    ax.set_yticks(range(len(rec.phases)), [ph.name for ph in rec.phases])
    ax.invert_yaxis()
    ax.set_xlabel("s since prepare began")
    ax.set_xlim(rec.phases[0].start_ms / 1000, rec.phases[-1].end_ms / 1000 + span / 8000)
    return Plot(title, _png(fig))


def _rate_mbit(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """(s, bytes so far) samples as (s, Mbit/s over the interval before each)."""
    xs, ys = [], []
    for (t0, b0), (t1, b1) in zip(points, points[1:]):
        if t1 > t0:
            xs.append(t1)
            ys.append((b1 - b0) * 8 / (t1 - t0) / 1e6)
    return xs, ys


def transfer(rec: ResultRecord) -> Plot:
    """Memory still to send (QEMU's trace), the disk still to copy (QEMU's block jobs, as
    the storage parts polled them; wancopy's own transport is not traced) and the send
    rate over time: QEMU's own and what A's uplink carried (memory, disk and everything
    else that crossed to B)."""
    title = "memory and disk remaining, send rate"
    series, trace = rec.series or {}, rec.memory.trace or []
    wire = series.get("a_uplink_tx") or []
    at = series.get("memory_trace_at_ms")
    jobs = series.get("disk_jobs") or {}
    if not trace and not wire:
        return Plot(title, missing=NO_SERIES if rec.series is None
                    else "no memory trace and no uplink samples in this record")
    fig, (ax,) = _figure(height=3.0)
    _phase_bands(ax, rec)
    rate_ax = ax.twinx()
    if trace and at is not None:
        t = [(at + row[0]) / 1000 for row in trace]
        ax.plot(t, [row[2] / 2**20 for row in trace], color="tab:blue",
                label="memory remaining (MiB)")
        xs, ys = _rate_mbit([(ti, row[3]) for ti, row in zip(t, trace)])
        rate_ax.plot(xs, ys, color="tab:orange", lw=1, label="QEMU's send rate (Mbit/s)")
    for name, rows in jobs.items():
        ax.plot([r[0] / 1000 for r in rows], [r[1] / 2**20 for r in rows], ls="--",
                drawstyle="steps-post", label=f"disk job {name} remaining (MiB)")
    if wire:
        xs, ys = _rate_mbit([(ms / 1000, sent) for ms, sent in wire])
        rate_ax.plot(xs, ys, color="tab:green", lw=1, alpha=0.8,
                     label="A's uplink, all traffic (Mbit/s)")
    ax.set_ylabel("MiB")
    rate_ax.set_ylabel("Mbit/s")
    ax.set_xlabel("s since prepare began")
    handles = ax.get_legend_handles_labels()[0] + rate_ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper right")
    note = ("" if not trace or at is not None else
            " (memory trace left out: no instant for migrate in this record)")
    return Plot(title + note, _png(fig))


def _series_plot(rec: ResultRecord, key: str, title: str, ylabel: str,
                 lost_label: str) -> Plot:
    rows = (rec.series or {}).get(key)
    if not rows:
        return Plot(title, missing=NO_SERIES if rec.series is None
                    else f"no {key} series in this record")
    fig, (ax,) = _figure(height=2.8)
    _phase_bands(ax, rec)
    outage = (rec.series or {}).get("client_outage")
    if outage:
        ax.axvspan(outage[0] / 1000, outage[1] / 1000, color="red", alpha=0.25,
                   label=f"client outage {outage[1] - outage[0]:.0f} ms")
    ok = [(r[0] / 1000, r[1]) for r in rows if r[1] is not None]
    lost = [r[0] / 1000 for r in rows if r[3]]
    ax.plot([x for x, _ in ok], [y for _, y in ok], ".", ms=2, color="tab:blue",
            label=ylabel)
    if lost:  # at the axis' foot (a log axis has no zero)
        ax.plot(lost, [0.04] * len(lost), "|", ms=12, mew=1.5, color="red",
                transform=ax.get_xaxis_transform(),
                label=f"{lost_label} ({sum(r[3] for r in rows)})")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylabel("ms")
    ax.set_xlabel("s since prepare began")
    ax.legend(fontsize=7, loc="upper right")
    return Plot(title, _png(fig))


def client_rtt(rec: ResultRecord) -> Plot:
    """The client's UDP echo RTT over time (each point the largest of its row), lost echoes
    as red ticks, the largest gap shaded."""
    return _series_plot(rec, "udp_rtt", "client's UDP echo RTT", "largest RTT per point",
                        "echoes lost")


def http_latency(rec: ResultRecord) -> Plot:
    """The client's HTTP requests (a new connection each) over time."""
    return _series_plot(rec, "http", "client's HTTP request latency", "latency",
                        "requests failed")


def record_plots(rec: ResultRecord) -> list[Plot]:
    return [timeline(rec), transfer(rec), client_rtt(rec), http_latency(rec)]


# ------------------------------------------------------------------ benches

@dataclass(frozen=True)
class Bar:
    """One figure a bench plot draws: its name in the summary, title, unit and divisor."""

    figure: str
    title: str
    unit: str
    scale: float = 1.0


#: What each kind's bars show, and the baseline each marks (a strategy, mode or run).
BENCH_BARS: dict[str, tuple[list[Bar], str | None]] = {
    "memory": ([Bar("total_ms", "total time", "s", 1000), Bar("outage_ms", "client outage", "ms"),
                Bar("wire_bytes", "bytes on the WAN", "MB", 1e6)], "precopy"),
    "storage": ([Bar("total_ms", "total time (disk in sync at B)", "s", 1000),
                 Bar("outage_ms", "client outage", "ms"),
                 Bar("bytes_on_wire", "disk bytes on the WAN", "MB", 1e6)], "mirror"),
    "network": ([Bar("total_ms", "total time", "s", 1000),
                 Bar("outage_ms", "client outage", "ms"),
                 Bar("wan_bytes", "bytes on the WAN (all A sent)", "MB", 1e6),
                 Bar("new_conn_ms", "new connection after the move", "ms")], "l2-extend"),
    "demo": ([Bar("total_ms", "total time", "s", 1000), Bar("outage_ms", "client outage", "ms"),
              Bar("wan_bytes", "bytes on the WAN (all A sent)", "MB", 1e6)], "defaults"),
    "seeds": ([Bar("total_ms", "total time", "s", 1000), Bar("outage_ms", "client outage", "ms"),
               Bar("wan_bytes", "bytes on the WAN (all A sent)", "MB", 1e6)], "technique"),
    "tunnel": ([Bar("goodput_mbit", "client goodput through the tunnel", "Mbit/s"),
                Bar("tunnel_cpu_pct", "OpenVPN CPU (both ends)", "% of a core")], "vxlan"),
    "wan": ([Bar("rtt_idle_p50_ms", "RTT idle (p50)", "ms"),
             Bar("rtt_loaded_p99_ms", "RTT loaded (p99)", "ms"),
             Bar("goodput_mbit", "one TCP stream's goodput", "Mbit/s")], None),
}


def _labels(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {(r.get("bench") or {}).get("case"): r.get("bench") or {}
            for r in doc.get("results", [])}


#: The labels that group a bench's cases on the x axis (the first one a case has).
GROUP_LABELS = ("workload", "paper")


def _split(case: str, labels: dict[str, Any]) -> tuple[str, str]:
    """A case as (group, bar): its workload (or paper), and the rest of its name."""
    group = next((labels[k] for k in GROUP_LABELS if k in labels), None)
    if group is None:
        return "", case
    rest = [part for part in case.split("/") if part != group]
    return str(group), "/".join(rest) or case


def bench_plots(doc: dict[str, Any]) -> list[Plot]:
    """Grouped bars per figure (median, min–max as whiskers), the baseline hatched, the
    targets that name a figure (``check["limit"]``) drawn as red lines."""
    kind = doc.get("kind")
    spec = BENCH_BARS.get(str(kind))
    if spec is None:
        return [Plot(f"{kind} bench", missing=f"a {kind} bench has no bars: its table says "
                                              "it all")]
    bars, baseline = spec
    summary = doc.get("summary") or []
    if not summary:
        return [Plot(f"{kind} bench", missing="no case has run yet")]
    labels = _labels(doc)
    cells = {_split(row["case"], labels.get(row["case"], {})): row for row in summary}
    groups = list(dict.fromkeys(g for g, _ in cells))
    names = list(dict.fromkeys(n for _, n in cells))
    return [_bars(bar, cells, groups, names, baseline, doc.get("checks") or [])
            for bar in bars]


def _bars(bar: Bar, cells: dict[tuple[str, str], dict[str, Any]], groups: list[str],
          names: list[str], baseline: str | None, checks: list[dict[str, Any]]) -> Plot:
    title = f"{bar.title} ({bar.unit})"
    if not any((row["figures"].get(bar.figure) or {}).get("n") for row in cells.values()):
        return Plot(title, missing=f"no run in this document has {bar.figure}")
    fig, (ax,) = _figure(height=3.2)
    width = 0.8 / max(len(names), 1)
    colours = plt.get_cmap("tab20")
    centre: dict[tuple[str, str], float] = {}
    for i, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for g, group in enumerate(groups):
            fig_ = (cells.get((group, name)) or {}).get("figures", {}).get(bar.figure) or {}
            if not fig_.get("n"):
                continue
            x = g + (i - (len(names) - 1) / 2) * width
            centre[(group, name)] = x
            med = fig_["median"] / bar.scale
            xs.append(x)
            ys.append(med)
            # the median is rounded (runner.spread): a whisker never goes below zero
            lo.append(max(0.0, med - fig_["min"] / bar.scale))
            hi.append(max(0.0, fig_["max"] / bar.scale - med))
        is_base = baseline is not None and name.split("/")[0] == baseline
        ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=2, color=colours(i % 20),
               hatch="//" if is_base else None, edgecolor="black" if is_base else None,
               label=f"{name} (baseline)" if is_base else name)
    drew = False
    for check in checks:
        limit = check.get("limit") or {}
        if limit.get("figure") != bar.figure or limit.get("value") is None:
            continue
        y = limit["value"] / bar.scale
        spots = [x for key, x in centre.items()
                 if limit.get("case") in (None, cells[key]["case"])]
        for x in spots:
            ax.hlines(y, x - width / 2, x + width / 2, colors="red", lw=2,
                      label=None if drew else "target")
            drew = True
    ax.set_xticks(range(len(groups)), [g or "all" for g in groups])
    ax.set_ylabel(bar.unit)
    medians = [(row["figures"].get(bar.figure) or {}).get("median") for row in cells.values()]
    positive = [m for m in medians if m]
    if positive and max(positive) > LOG_ABOVE * min(positive):
        ax.set_yscale("log")
        title += ", log scale"
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return Plot(title, _png(fig))
