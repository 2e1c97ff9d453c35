"""Pure statistics behind the probe figures: gaps between arrivals, percentiles.

The client-visible outage is defined (DESIGN.md) as the largest gap between
consecutive successful replies.  Two views of the same definition live here:

* ``max_gap(times, end=...)`` over a finished list of arrival times, for tests
  and for re-analysis of saved data;
* ``GapTracker``, the incremental form the agent's threads update per reply,
  so that a probe running for an hour at 1 kHz keeps O(1) state for gaps.

Both optionally close an *open* gap at ``end`` (the moment the probe stopped):
a target that never answers again must show as one long outage, not as none.
Times are integers in nanoseconds (``time.monotonic_ns``) or floats in any
unit; results are in the input unit unless a name says ``_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Gap:
    """The largest silence: its length and when it began (same unit as inputs)."""

    length: float
    start: float


def max_gap(times: Sequence[float], *, end: float | None = None) -> Gap:
    """Largest difference between consecutive ``times`` (sorted ascending).

    With ``end``, the silence from the last arrival until ``end`` counts too.
    With fewer than two points and no ``end`` the gap is 0 (nothing to span);
    with no arrivals at all the gap is undefined and 0 is returned: callers
    that need "never answered" check their counts.
    """
    best = Gap(0.0, times[0] if times else 0.0)
    for prev, cur in zip(times, times[1:]):
        if cur - prev > best.length:
            best = Gap(cur - prev, prev)
    if end is not None and times and end - times[-1] > best.length:
        best = Gap(end - times[-1], times[-1])
    return best


class GapTracker:
    """Incremental ``max_gap``: feed arrival times in order with ``add``.

    Not thread-safe on its own; each probe thread owns one and the report is
    read after the thread has stopped.
    """

    __slots__ = ("count", "first", "last", "max_length", "max_start")

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None
        self.max_length = 0
        self.max_start: int | None = None

    def __repr__(self) -> str:
        return (f"GapTracker(count={self.count}, max_length={self.max_length}, "
                f"max_start={self.max_start})")

    def add(self, t: int) -> None:
        if self.last is None:
            self.first = t
            self.max_start = t
        elif t - self.last > self.max_length:
            self.max_length = t - self.last
            self.max_start = self.last
        self.last = t
        self.count += 1

    def result(self, end: int | None = None) -> Gap:
        """The largest gap so far, closing the open one at ``end`` if given."""
        if self.last is None:
            return Gap(0.0, 0.0)
        length, start = self.max_length, self.max_start
        if end is not None and end - self.last > length:
            length, start = end - self.last, self.last
        return Gap(float(length), float(start if start is not None else self.last))


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation; None if empty.

    Same definition as numpy's default ("linear", Hyndman & Fan type 7), so
    p50 of [1, 2, 3, 4] is 2.5 and p100 is the maximum.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def ns_to_ms(ns: float) -> float:
    """Nanoseconds to milliseconds, rounded to the microsecond (enough, and stable JSON)."""
    return round(ns / 1e6, 3)


def relative_to_marks(t_ms: float, marks: dict[str, float]) -> dict[str, float]:
    """``t_ms`` minus each mark: negative means before the mark."""
    return {name: round(t_ms - mark, 3) for name, mark in marks.items()}


def last_mark_before(t_ms: float, marks: dict[str, float]) -> tuple[str, float] | None:
    """The latest mark at or before ``t_ms`` and how long after it ``t_ms`` is."""
    before = [(mark, name) for name, mark in marks.items() if mark <= t_ms]
    if not before:
        return None
    mark, name = max(before)
    return name, round(t_ms - mark, 3)


#: At most this many rows in a series kept for plots (``downsample``).
MAX_SERIES_ROWS = 1500


def downsample(points: Sequence[tuple[float, float | None]],
               max_rows: int = MAX_SERIES_ROWS) -> list[list[float | int | None]]:
    """``(t, value or None for a failure)`` points, in time order, as at most ``max_rows``
    rows ``[t of the first point, largest value or None, points, failures]`` of equal
    point counts: a spike or a loss anywhere still shows in its row."""
    step = max(1, math.ceil(len(points) / max_rows))
    rows: list[list[float | int | None]] = []
    for i in range(0, len(points), step):
        chunk = points[i:i + step]
        values = [v for _, v in chunk if v is not None]
        rows.append([round(chunk[0][0], 1), round(max(values), 3) if values else None,
                     len(chunk), len(chunk) - len(values)])
    return rows
