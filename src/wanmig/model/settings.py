"""The QEMU settings each strategy runs with: the same numbers the model assumes.

``migration_settings`` is what the memory parts apply (capabilities to turn
on, ``migrate-set-parameters`` values, when to call ``migrate-start-postcopy``);
``predict`` models exactly these, so a prediction and a run cannot disagree on
a setting.

precopy-tuned's and hybrid's downtime-limit is derived from the outage target: the
target minus everything else the outage costs (``switchover.Switchover.overhead_ms``:
fixed switchover work, send backlog, device state, RTT, resume), for hybrid at
least what keeps QEMU's threshold above the guest's hot set, clamped to
[100, 300] ms (see ``DOWNTIME_LIMIT_MIN_MS``).  QEMU's limit governs only the final RAM delta, so that is the
share of the target left for it.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from .inputs import Calibration, Measurements, Strategy, Targets
from .link import (QEMU_DEFAULT_MAX_BANDWIDTH, line_bytes_s, multifd_channels, pipe_for,
                   tuned_max_bandwidth)
from .switchover import switchover

QEMU_DEFAULT_DOWNTIME_MS = 300
#: Not lower: on QEMU 7.2 with multifd and 20 ms, 5 of 5 runs resumed hung guests.  On
#: QEMU 10.0 with verify on, 30 ms came out whole in 6 of 6 idle runs but did not
#: shorten QEMU's downtime (104-118 ms at 30 ms in the 5 with multifd, 108-112 ms at
#: 129 ms: multifd's completion is most of it, ``Calibration.multifd_sync_ms``), so
#: the floor stays.
DOWNTIME_LIMIT_MIN_MS = 100
DOWNTIME_LIMIT_MAX_MS = 300
# auto-converge: throttle the vCPUs from ``throttle_start_pct`` (never below QEMU's
# default 20 %), add 10 % each time, up to ``throttle_max_pct``; a sync period counts
# as "not shrinking" when it dirtied more than 50 % of what it sent.
THROTTLE_INITIAL_PCT = 20
THROTTLE_INCREMENT_PCT = 10
THROTTLE_MAX_PCT = 99
#: The most under TCG.  On QEMU 10.0 with verify on, tuned runs against 20 and
#: 50 MB/s of writes converged at 32-80 % and came out whole (20 of 20, the 50 MB/s
#: ones at the 80 % ceiling); 99 % has not been measured there.  (The refusal of
#: fast writers under TCG that QEMU 7.2 needed is gone with 7.2: docs/design.md,
#: "Memory integrity".)
TCG_THROTTLE_MAX_PCT = 80
THROTTLE_TRIGGER_PCT = 50
ZSTD_LEVEL = 1
#: hybrid: a pass after the first that leaves more than this share of the previous
#: pass's dirty bytes is a stall (memory/plan.py StallDetector.ratio).
STALL_RATIO = 0.8
#: ... unless it leaves less than this many times QEMU's switchover threshold.
NEAR_CONVERGENCE = 2.0
#: hybrid's threshold is kept this far above the guest's hot set (``hot_set_bytes``).
HOT_SET_MARGIN = 1.5
PostcopyTrigger = Literal["never", "immediate", "on-stall"]


class MigrationSettings(BaseModel):
    """What to tell QEMU for one strategy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy
    #: Migration capabilities to turn on (all others off).
    capabilities: tuple[str, ...]
    #: ``migrate-set-parameters`` arguments.
    parameters: dict[str, int | str]
    #: When to call ``migrate-start-postcopy`` (memory/plan.py's trigger):
    #: "never", "immediate", or "on-stall" (a pass after the first leaves more than
    #: ``STALL_RATIO`` of the previous one's dirty bytes, or ``postcopy_budget_s``
    #: of precopy is spent).
    postcopy: PostcopyTrigger = "never"
    postcopy_budget_s: float | None = None


def throttled_rate(rate: float, pct: int) -> float:
    """The guest's dirty rate with its vCPU throttled to ``pct`` %: it runs 10 ms in
    every 10 / (1 - p) (bench d20 runs converged where this predicts they would)."""
    return rate * (100 - pct) / 100


def throttle_max_pct(m: Measurements) -> int:
    """auto-converge's ceiling: QEMU's 99 %, or ``TCG_THROTTLE_MAX_PCT`` under TCG."""
    return TCG_THROTTLE_MAX_PCT if m.accel == "tcg" else THROTTLE_MAX_PCT


def throttle_start_pct(m: Measurements, cal: Calibration = Calibration()) -> int:
    """auto-converge's first throttle: the least that brings the measured dirty rate
    under QEMU's trigger share of what the tuned pipe moves.

    QEMU starts at 20 % and adds 10 % only every second sync period that dirtied
    more than that share; over a WAN a period is a pass of several seconds, so a
    guest needing 90 % spent a minute climbing there (bench run 5: 76 s at
    20 MB/s).  Starting where the survey says the climb would end, QEMU still
    climbs further if the guest dirties more than measured.
    """
    target = (pipe_for("precopy-tuned", m, cal, resend=True).raw_bytes_s
              * THROTTLE_TRIGGER_PCT / 100)
    ceiling = throttle_max_pct(m)
    return next((pct for pct in range(THROTTLE_INITIAL_PCT, ceiling)
                 if throttled_rate(m.dirty_rate_bytes_s, pct) <= target), ceiling)


def hot_set_bytes(m: Measurements, cal: Calibration) -> float:
    """What an unthrottled guest leaves dirty however short a pass (``hot_set_bytes``)."""
    return min(float(m.working_set_bytes), cal.hot_set_bytes)


def downtime_limit_ms(strategy: Strategy, m: Measurements, targets: Targets,
                      cal: Calibration = Calibration()) -> int:
    """The downtime-limit a strategy uses: QEMU's 300 ms for default precopy,
    else the outage target's share left for the final RAM delta -- for hybrid at
    least enough that QEMU's threshold clears the guest's hot set by
    ``HOT_SET_MARGIN`` (else precopy hovers there until the budget runs out)."""
    if strategy == "precopy":
        return QEMU_DEFAULT_DOWNTIME_MS
    pipe = pipe_for(strategy, m, cal)
    overhead = switchover(m, cal, pipe, bounded_backlog=True,
                          multifd=strategy == "precopy-tuned").overhead_ms
    share = targets.target_outage_ms - overhead
    if strategy == "hybrid":
        resend = pipe_for(strategy, m, cal, resend=True)
        share = max(share, HOT_SET_MARGIN * hot_set_bytes(m, cal) / resend.raw_bytes_s * 1e3)
    return math.ceil(min(DOWNTIME_LIMIT_MAX_MS, max(DOWNTIME_LIMIT_MIN_MS, share)))


def migration_settings(strategy: Strategy, m: Measurements, targets: Targets,
                       cal: Calibration = Calibration()) -> MigrationSettings:
    if strategy == "precopy":
        return MigrationSettings(strategy=strategy, capabilities=(), parameters={
            "max-bandwidth": QEMU_DEFAULT_MAX_BANDWIDTH,
            "downtime-limit": QEMU_DEFAULT_DOWNTIME_MS})
    limit = downtime_limit_ms(strategy, m, targets, cal)
    if strategy == "precopy-tuned":
        throttle = {"cpu-throttle-initial": throttle_start_pct(m, cal),
                    "cpu-throttle-increment": THROTTLE_INCREMENT_PCT,
                    "max-cpu-throttle": throttle_max_pct(m),
                    "throttle-trigger-threshold": THROTTLE_TRIGGER_PCT}
        return MigrationSettings(
            strategy=strategy, capabilities=("multifd", "auto-converge"), parameters={
                "max-bandwidth": tuned_max_bandwidth(m, cal),
                "downtime-limit": limit,
                "multifd-channels": multifd_channels(m, cal),
                "multifd-compression": "zstd",
                "multifd-zstd-level": ZSTD_LEVEL,
                **throttle})
    line = int(line_bytes_s(m))
    caps = ("postcopy-ram", "postcopy-preempt") if m.postcopy_preempt else ("postcopy-ram",)
    if strategy == "postcopy":
        return MigrationSettings(
            strategy=strategy, capabilities=caps,
            parameters={"max-bandwidth": line, "max-postcopy-bandwidth": 0},
            postcopy="immediate")
    if strategy == "hybrid":
        return MigrationSettings(
            strategy=strategy, capabilities=caps,
            parameters={"max-bandwidth": line, "downtime-limit": limit,
                        "max-postcopy-bandwidth": 0},
            postcopy="on-stall", postcopy_budget_s=targets.postcopy_budget_s)
    raise ConfigError(f"unknown memory strategy {strategy!r}", field="strategy")
