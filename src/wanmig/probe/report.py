"""``ProbeReport``: what the client saw during one probe run, as a plain value.

The agent prints it as one JSON object (the ``report`` event); the controller
turns it back into this frozen dataclass; the engine (``watch.py``) copies figures into
the result record (``network.client_outage_ms`` = ``udp_max_gap_ms``,
``network.tcp_survived``).  ``to_dict``/``from_dict`` round-trip exactly, and
``from_dict`` ignores keys it does not know (the ``event`` key, fields added by
a newer agent) but insists on every field without a default.

All times are milliseconds; instants (``udp_max_gap_start_ms``, ``marks``) are
relative to the agent's start.  The last four fields say how far the figures
can be trusted: how late UDP sends were against their schedule and how much
CPU the agent used.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .stats import last_mark_before, relative_to_marks


@dataclass(frozen=True)
class ProbeWindow:
    """What a mark closes: since the previous mark (or the first reply), the largest UDP
    gap (the one still open at the mark ending there), the echoes sent and answered and
    their median RTT.  ``t_ms`` and ``udp_max_gap_start_ms`` (None: no reply in the
    window) are on the agent's clock."""

    name: str
    t_ms: float
    udp_max_gap_ms: float
    udp_max_gap_start_ms: float | None
    udp_sent: int = 0
    udp_received: int = 0
    udp_rtt_p50_ms: float | None = None

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> ProbeWindow:
        """From the agent's ``marked`` event; ValueError if it lacks the window."""
        try:
            start, rtt = event["udp_window_max_gap_start_ms"], event["udp_window_rtt_p50_ms"]
            return cls(str(event["name"]), float(event["t_ms"]),
                       float(event["udp_window_max_gap_ms"]),
                       None if start is None else float(start),
                       int(event["udp_window_sent"]), int(event["udp_window_received"]),
                       None if rtt is None else float(rtt))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"mark answered without its window: {event}") from exc

    def summary(self) -> dict[str, Any]:
        """The window as the record keeps it (``network.probe_windows``): what the client
        got up to this mark."""
        return {"until": self.name, "t_ms": self.t_ms, "udp_sent": self.udp_sent,
                "udp_received": self.udp_received, "udp_rtt_p50_ms": self.udp_rtt_p50_ms,
                "udp_max_gap_ms": self.udp_max_gap_ms}


@dataclass(frozen=True)
class ProbeReport:
    """Summary of one run of the UDP, TCP and HTTP probes."""

    udp_sent: int
    udp_received: int
    udp_lost: int
    udp_rtt_p50_ms: float | None
    udp_rtt_p99_ms: float | None
    udp_max_gap_ms: float
    udp_max_gap_start_ms: float
    tcp_survived: bool
    tcp_echoes: int
    tcp_max_gap_ms: float
    tcp_error: str | None
    http_ok: int
    http_failed: int
    http_max_gap_ms: float
    http_latency_p50_ms: float | None
    http_latency_max_ms: float | None
    marks: dict[str, float] = field(default_factory=dict)
    duration_ms: float = 0.0
    # measurement quality (absent from reports of older agents)
    udp_send_late_p99_ms: float | None = None
    udp_send_late_max_ms: float | None = None
    udp_max_gap_end_ms: float | None = None
    agent_cpu_pct: float | None = None
    #: Runs of unanswered echoes: [first sent ms, last sent ms, count] (``UdpEcho``).
    udp_loss_bursts: list[list[float]] = field(default_factory=list)
    http_failed_1s: int | None = None
    #: By name (``--name``): when the resolver's answer changed ([t_ms, address]) and the
    #: first answered request at each address ({address: t_ms}).
    dns_answers: list[list[Any]] | None = None
    http_first_ok_ms: dict[str, float] | None = None
    #: For plots (``stats.downsample`` rows, ms on the agent's clock): every UDP echo by
    #: when it was sent (largest RTT, lost ones), every HTTP request by when it began.
    udp_series: list[list[Any]] | None = None
    http_series: list[list[Any]] | None = None

    def udp_lost_between(self, start_ms: float, end_ms: float) -> int:
        """Unanswered echoes sent from ``start_ms`` to ``end_ms`` (the agent's clock); the
        echoes of a burst are evenly spaced, so one that crosses an end counts in part."""
        lost = 0
        for first, last, count in self.udp_loss_bursts:
            n = int(count)
            step = (last - first) / (n - 1) if n > 1 else 0.0
            if step <= 0:
                lost += n if start_ms <= first <= end_ms else 0
                continue
            lo = max(0, math.ceil((start_ms - first) / step - 1e-9))
            hi = min(n - 1, math.floor((end_ms - first) / step + 1e-9))
            lost += max(0, hi - lo + 1)
        return lost

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["marks"] = dict(self.marks)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeReport:
        """Rebuild from ``to_dict`` output; ValueError names missing fields."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        missing = [name for name, f in known.items()
                   if name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"probe report lacks {', '.join(missing)}")
        kwargs = {name: data[name] for name in known if name in data}
        kwargs["marks"] = {str(k): float(v) for k, v in dict(kwargs.get("marks", {})).items()}
        return cls(**kwargs)

    # -- derived views (not serialised: computed from the fields) -----------

    @property
    def client_outage_ms(self) -> float:
        """The figure DESIGN.md calls ``client_outage_ms``."""
        return self.udp_max_gap_ms

    def udp_max_gap_vs_marks(self) -> dict[str, float]:
        """Start of the largest UDP gap minus each mark (ms; negative = before it)."""
        return relative_to_marks(self.udp_max_gap_start_ms, self.marks)

    def udp_max_gap_after_mark(self) -> tuple[str, float] | None:
        """The last mark before the largest UDP gap began, and how long before."""
        return last_mark_before(self.udp_max_gap_start_ms, self.marks)
