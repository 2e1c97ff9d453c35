"""Precopy's passes over guest memory, modelled one by one.

A small loop rather than a closed form, so that auto-converge's throttling and
the hybrid's switch to postcopy fall out of the same steps QEMU takes:

1. Pass 1 sends every non-zero page (``nonzero / raw rate``) and a 9-byte
   record per zero page; checking the zero pages takes the sender's CPU, and
   overlaps with the sending unless that CPU is what binds (``pass_one_extra_s``).
2. At the end of each pass QEMU syncs the dirty bitmap: the next pass sends
   what the guest dirtied during this one, and without auto-converge never less
   than its hot set (``Calibration.hot_set_bytes``: pages it re-dirties all the
   time stay dirty however short the pass).  Distinct bytes dirtied in ``t``
   seconds at rate ``r`` over a writable working set ``W`` are taken as
   ``W * (1 - exp(-r t / W))`` (uniform random writes: ``r t`` while small,
   never more than ``W``); ``r`` is calc-dirty-rate's figure.
3. QEMU stops the guest once the dirty bytes left fit in the downtime-limit at
   the measured rate: ``remaining <= raw rate * downtime-limit``.
4. auto-converge (QEMU's ``migration_trigger_throttle``): at a sync at least
   1 s after the previous check, if the period dirtied more than 50 % of what
   it sent, count it; on the second such period throttle the vCPUs (from
   cpu-throttle-initial, then +10 % up to max-cpu-throttle).  A throttle of
   ``p`` scales the dirty rate by ``1 - p``.
5. Without throttling left to add, a guest dirtying at least as fast as the
   pipe moves pages is stuck once a pass no longer shrinks the dirty set.
6. hybrid: switch to postcopy when a pass after the first leaves more than
   0.8 of the previous pass's dirty bytes, and more than twice the threshold
   of step 3 (hybrid's stall detector, memory/plan.py),
   or mid-pass when the precopy budget runs out: then what is left is the
   unsent rest of the pass plus what was dirtied during it.

Ignored: bitmap-sync cost, the rate-limit's 100 ms granularity, pages dirtied
while still queued in the same pass (counted twice: a slight overestimate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .inputs import PAGE, Calibration, Measurements
from .link import Pipe
from .settings import (NEAR_CONVERGENCE, STALL_RATIO, THROTTLE_INCREMENT_PCT,
                       THROTTLE_MAX_PCT, THROTTLE_TRIGGER_PCT, hot_set_bytes, throttled_rate)

Outcome = Literal["converged", "switched", "stuck", "timeout"]
MAX_PASSES = 100_000


@dataclass(frozen=True)
class Iteration:
    """How precopy's iterative phase ended."""

    outcome: Outcome
    time_s: float
    page_bytes: float       # guest-page bytes sent while iterating (resends included)
    first_pass_bytes: float  # ... of which in the first pass
    zero_pages: int         # sent as 9-byte records in pass 1
    remaining_bytes: float  # dirty page bytes left when iterating ended
    passes: int
    throttle_pct: int
    dirty_bytes_s: float    # the guest's dirty rate at the end, after throttling


def dirtied(rate: float, seconds: float, working_set: float) -> float:
    """Distinct bytes dirtied in ``seconds`` at ``rate`` within ``working_set``."""
    if working_set <= 0 or rate <= 0:
        return 0.0
    return working_set * -math.expm1(-rate * seconds / working_set)


def pass_one_extra_s(m: Measurements, cal: Calibration, pipe: Pipe) -> tuple[int, float]:
    """Zero pages, and what pass 1 takes beyond sending the non-zero pages: the zero
    pages' records on the main stream, and the sender's CPU (the scan for zero pages,
    and the pages themselves at ``pipe.cpu_bytes_s``) where it outlasts the sending --
    a sender that waits on the network scans while it waits."""
    zero_bytes = m.ram_bytes - m.nonzero_bytes
    zero_pages = zero_bytes // PAGE
    records_s = zero_pages * cal.zero_page_stream_bytes / pipe.main_bytes_s
    send_s = m.nonzero_bytes / pipe.raw_bytes_s
    cpu_s = m.nonzero_bytes / pipe.cpu_bytes_s + zero_bytes / cal.zero_scan_bytes_s
    return zero_pages, records_s + max(0.0, cpu_s - send_s)


def iterate(m: Measurements, cal: Calibration, pipe: Pipe, resend: Pipe, *,
            threshold_bytes: float, throttle_initial: int | None, limit_s: float,
            throttle_max: int = THROTTLE_MAX_PCT, switch_on_stall: bool = False,
            switch_after_s: float | None = None) -> Iteration:
    """Run precopy's passes until it converges, switches, sticks or times out.

    ``pipe`` carries the first pass, ``resend`` the later ones (pipe_for).
    ``throttle_initial``: auto-converge's first throttle (None: no auto-converge), at
    most ``throttle_max``.
    ``switch_on_stall`` and ``switch_after_s`` end a hybrid's precopy part.
    """
    auto_converge = throttle_initial is not None
    zero_pages, extra_s = pass_one_extra_s(m, cal, pipe)
    pending = float(m.nonzero_bytes)
    t = sent = first = 0.0
    passes = throttle = high_periods = 0
    period_s = period_dirty = period_sent = 0.0
    while True:
        rate = throttled_rate(m.dirty_rate_bytes_s, throttle)
        dt = pending / (resend if passes else pipe).raw_bytes_s + extra_s
        extra_s = 0.0
        if switch_after_s is not None and t + dt > switch_after_s:
            # the budget runs out mid-pass: switch with the rest of it still to send
            part = (switch_after_s - t) / dt
            left = pending * (1 - part) + dirtied(rate, switch_after_s - t, m.working_set_bytes)
            return Iteration(outcome="switched", time_s=switch_after_s,
                             page_bytes=sent + pending * part,
                             first_pass_bytes=first if passes else pending * part,
                             zero_pages=zero_pages,
                             remaining_bytes=min(left, m.ram_bytes), passes=passes + 1,
                             throttle_pct=throttle, dirty_bytes_s=rate)
        new = dirtied(rate, dt, m.working_set_bytes)
        if not auto_converge:  # a pass leaves at least the guest's hot set
            new = max(new, hot_set_bytes(m, cal))
        if not passes:
            first = pending
        t, sent, passes = t + dt, sent + pending, passes + 1
        if auto_converge:
            period_s, period_dirty, period_sent = (period_s + dt, period_dirty + new,
                                                   period_sent + pending)
            if period_s > 1.0:
                if period_dirty > period_sent * THROTTLE_TRIGGER_PCT / 100:
                    high_periods += 1
                    if high_periods >= 2:
                        high_periods = 0
                        throttle = (min(throttle + THROTTLE_INCREMENT_PCT, throttle_max)
                                    if throttle else throttle_initial)
                period_s = period_dirty = period_sent = 0.0
        previous, pending = pending, new

        def done(outcome: Outcome) -> Iteration:
            return Iteration(outcome=outcome, time_s=t, page_bytes=sent,
                             first_pass_bytes=first, zero_pages=zero_pages,
                             remaining_bytes=pending, passes=passes,
                             throttle_pct=throttle,
                             dirty_bytes_s=throttled_rate(m.dirty_rate_bytes_s, throttle))

        if pending <= threshold_bytes:
            return done("converged")
        if t >= limit_s or passes >= MAX_PASSES:
            return done("timeout")
        if (switch_on_stall and passes >= 2
                and pending > max(previous * STALL_RATIO, NEAR_CONVERGENCE * threshold_bytes)):
            return done("switched")
        can_throttle = auto_converge and throttle < throttle_max
        # stuck at the throttle now in force: a step to the ceiling in this pass still
        # gets its pass at the lower rate before the verdict
        if (not can_throttle
                and throttled_rate(m.dirty_rate_bytes_s, throttle) >= resend.raw_bytes_s
                and pending >= previous * (1 - 1e-3)):
            return done("stuck")
