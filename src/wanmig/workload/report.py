"""What the web load saw: ``WebLoadReport``, and ``WebTally``, the pure bookkeeping behind it.

The agent feeds every finished request to a ``WebTally`` as a
``RequestOutcome`` (in completion order), and at stop turns the tally into a
``WebLoadReport``, which it prints as its ``report`` event; the controller
reads it back with ``from_dict``.  Nothing here does I/O, so the arithmetic is
unit-tested on synthetic outcomes.

Definitions (times in ms, instants relative to the start of the load, i.e.
the agent's ``ready``; the same clock as ``marks``)::

    sent          requests issued (a TCP connection was attempted)
    ok            complete 2xx responses (the whole body, by Content-Length or EOF)
    failed        every other finished request: refused, reset, timed out, non-2xx,
                  cut short.  ``timeouts`` counts the ones that hit the per-request
                  timeout (so timeouts <= failed); ``errors`` counts failures by kind
    abandoned     still in flight when the load stopped: neither ok nor failed
    skipped       scheduled slots not issued, because ``max_in_flight`` requests were
                  outstanding or the agent itself fell behind; sent + skipped is the
                  number of slots the schedule had
    bytes_received  everything read from the sockets (headers and bodies), all requests
    latency_*     connect to last byte, of the ok requests only
    max_gap_ms    the longest stretch without a successful completion, from the start
                  of the load until it stopped: a server that never answers again
                  shows as one long gap, not as none (the probe's definition)

So ``sent == ok + failed + abandoned``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..probe.stats import GapTracker, ns_to_ms, percentile


@dataclass(frozen=True)
class RequestOutcome:
    """One finished request; ``error`` is a short kind ("timeout", "HTTP 404", ...)."""

    path: str
    ok: bool
    start_ns: int
    end_ns: int
    bytes_received: int = 0
    error: str | None = None
    timed_out: bool = False

    @property
    def latency_ms(self) -> float:
        return ns_to_ms(self.end_ns - self.start_ns)


class WebLoadReport(BaseModel):
    """Summary of one web-load run; round-trips through ``to_dict``/``from_dict``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    target: str
    rate_per_s: float
    duration_ms: float
    sent: int
    ok: int
    failed: int
    timeouts: int
    abandoned: int
    skipped: int
    bytes_received: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    max_gap_ms: float
    max_gap_start_ms: float
    errors: dict[str, int] = {}
    marks: dict[str, float] = {}
    peak_in_flight: int = 0

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebLoadReport:
        """Rebuild from ``to_dict`` output (unknown keys such as ``event`` are ignored);
        pydantic's ValidationError (a ValueError) names what is missing or wrong."""
        return cls.model_validate(data)

    @property
    def ok_per_s(self) -> float:
        """Successful requests per second over the run (0 for an empty run)."""
        return round(self.ok * 1000.0 / self.duration_ms, 3) if self.duration_ms > 0 else 0.0


class WebTally:
    """Running counts of one load; ``report()`` summarises them.  Times: monotonic ns.

    Not thread-safe: the agent's event loop owns it.
    """

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.timeouts = 0
        self.abandoned = 0
        self.skipped = 0
        self.bytes_received = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.latencies_ms: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.marks: dict[str, float] = {}
        self.gaps = GapTracker()
        self.gaps.add(start_ns)  # the window opens at the start, not at the first success

    def __repr__(self) -> str:
        return (f"WebTally(sent={self.sent}, ok={self.ok}, failed={self.failed}, "
                f"in_flight={self.in_flight}, skipped={self.skipped})")

    def issued(self) -> None:
        """A request was started."""
        self.sent += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def skip(self, slots: int = 1) -> None:
        """``slots`` scheduled requests were not issued."""
        self.skipped += slots

    def finished(self, outcome: RequestOutcome) -> None:
        """A request ended; call in completion order (the gap tracker needs it)."""
        self.in_flight -= 1
        self.bytes_received += outcome.bytes_received
        if outcome.ok:
            self.ok += 1
            self.latencies_ms.append(outcome.latency_ms)
            self.gaps.add(outcome.end_ns)
        else:
            self.failed += 1
            self.timeouts += outcome.timed_out
            self.errors[outcome.error or "unknown"] += 1

    def abandoned_one(self, bytes_received: int = 0) -> None:
        """A request in flight at stop was given up."""
        self.in_flight -= 1
        self.abandoned += 1
        self.bytes_received += bytes_received

    def mark(self, name: str, now_ns: int) -> float:
        """Record a named instant; returns it in ms since the start."""
        self.marks[name] = t_ms = ns_to_ms(now_ns - self.start_ns)
        return t_ms

    def report(self, end_ns: int, *, target: str, rate_per_s: float) -> WebLoadReport:
        """The summary up to ``end_ns`` (the moment the load stopped)."""
        gap = self.gaps.result(end=end_ns)
        p50, p99 = (percentile(self.latencies_ms, q) for q in (50, 99))
        return WebLoadReport(
            target=target, rate_per_s=rate_per_s, duration_ms=ns_to_ms(end_ns - self.start_ns),
            sent=self.sent, ok=self.ok, failed=self.failed, timeouts=self.timeouts,
            abandoned=self.abandoned, skipped=self.skipped, bytes_received=self.bytes_received,
            latency_p50_ms=None if p50 is None else round(p50, 3),
            latency_p99_ms=None if p99 is None else round(p99, 3),
            latency_max_ms=max(self.latencies_ms) if self.latencies_ms else None,
            max_gap_ms=ns_to_ms(gap.length), max_gap_start_ms=ns_to_ms(gap.start - self.start_ns),
            errors=dict(self.errors), marks=dict(self.marks),
            peak_in_flight=self.peak_in_flight)
