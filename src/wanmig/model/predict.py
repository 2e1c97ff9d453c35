"""Per-strategy predictions: total time, client outage, bytes, convergence.

Each strategy runs on its ``Pipe`` (link.py) with its ``MigrationSettings``
(settings.py).  Times (all ms)::

    setup      = setup_rtts * RTT + setup_fixed
    precopy    total  = setup + passes (rounds.py) + QEMU downtime
               QEMU downtime = switchover fixed [+ multifd sync] + final delta / raw rate
                               + device state / main-stream rate
               outage = QEMU downtime + send backlog + one-way [+ multifd load]
                        + resume + reply one-way                        (switchover.py)
    postcopy   total  = setup + QEMU downtime (no RAM delta) + non-zero pages / raw rate + RTT
               outage = QEMU downtime + backlog + one-way + resume + reply one-way
                        + fault stall
               fault stall = hot pages * (RTT + queue + one page [+ send backlog without
                             postcopy-preempt]), at most the background push
    hybrid     precopy passes at the line rate until a pass stalls or the budget is spent,
               then postcopy for what is still dirty; only the hot pages the guest
               writes are still remote.  Completing as precopy, its QEMU downtime also
               waits for the destination on the return path (postcopy-ram is on).

``total_ms`` is QEMU's total-time (``migrate`` until the source reports
completed), the figure the result record's ``memory.total_ms`` holds;
``downtime_ms`` is QEMU's downtime; ``outage_ms`` is what a client at the
source site sees.  ``bytes`` is WAN payload (after zstd, with TLS);
``ram_stream_bytes`` is what QEMU's ``ram.transferred`` should read (QEMU 7.2
counts multifd pages uncompressed).  A strategy "converges" when it completes
within ``targets.timeout_s``; postcopy and hybrid always complete.
"""

from __future__ import annotations

import math
from dataclasses import replace

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from .inputs import PAGE, STRATEGIES, Calibration, Measurements, Strategy, Targets
from .link import Pipe, pipe_for
from .rounds import Iteration, iterate, pass_one_extra_s
from .settings import THROTTLE_MAX_PCT, MigrationSettings, migration_settings
from .switchover import Switchover, backlog_ms, switchover


class Prediction(BaseModel):
    """What the model expects of one strategy (goes into the result record)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy
    converges: bool
    total_ms: float | None = None
    outage_ms: float | None = None
    downtime_ms: float | None = None
    bytes: int | None = None
    ram_stream_bytes: int | None = None
    rounds: int | None = None           # QEMU's dirty-sync-count: setup + each pass + final
    throttle_pct: int | None = None     # auto-converge's last throttle
    usable_bytes_s: float               # guest-page bytes/s the strategy's channels move
    limit: str | None = None            # why it does not converge (None when it does)
    parameters: dict[str, int | str]    # the QEMU parameters assumed (settings.py)
    notes: str = ""


def _mb(x: float) -> str:
    return f"{x / 1e6:.1f} MB"


class _Context:
    """Everything one strategy's formulas share."""

    def __init__(self, strategy: Strategy, m: Measurements, targets: Targets,
                 cal: Calibration) -> None:
        self.strategy, self.m, self.targets, self.cal = strategy, m, targets, cal
        self.settings: MigrationSettings = migration_settings(strategy, m, targets, cal)
        self.pipe: Pipe = pipe_for(strategy, m, cal)
        self.resend: Pipe = pipe_for(strategy, m, cal, resend=True)
        self.sw: Switchover = switchover(
            m, cal, self.pipe, bounded_backlog=strategy != "precopy",
            multifd="multifd" in self.settings.capabilities)
        rtts = cal.setup_rtts + (cal.tls_handshake_rtts if m.tls else 0.0)
        self.setup_ms = rtts * m.rtt_ms + cal.setup_fixed_ms

    @property
    def timeout_ms(self) -> float:
        return self.targets.timeout_s * 1e3

    @property
    def threshold_bytes(self) -> float:
        """QEMU switches over when what is dirty fits in the downtime-limit at the rate
        it measures, by then the rate of resent pages."""
        return self.resend.raw_bytes_s * int(self.settings.parameters["downtime-limit"]) / 1e3

    def push_ms(self, page_bytes: float) -> float:
        """Time to send dirtied pages (the final delta, postcopy's push)."""
        return page_bytes / self.resend.raw_bytes_s * 1e3

    def volume(self, page_bytes: float, zero_pages: int,
               first_pass_bytes: float = 0.0) -> tuple[int, int]:
        """(WAN bytes, QEMU ram.transferred) for pages sent (``first_pass_bytes`` of
        them in the first pass, the rest dirtied pages), zero records and device state."""
        cal = self.cal
        zero = zero_pages * cal.zero_page_stream_bytes
        wire = (first_pass_bytes * self.pipe.wire_per_raw
                + (page_bytes - first_pass_bytes) * self.resend.wire_per_raw
                + (zero + cal.device_state_bytes) * cal.tls_factor(self.m))
        stream = page_bytes * (1 + cal.page_header_bytes / PAGE) + zero
        return int(round(wire)), int(round(stream))

    def prediction(self, **fields: object) -> Prediction:
        return Prediction(strategy=self.strategy, usable_bytes_s=self.pipe.raw_bytes_s,
                          parameters=self.settings.parameters, **fields)

    def fault_stall_ms(self, faults: float, push_ms: float) -> float:
        """Serial remote faults, each waiting one loaded RTT (the push keeps the
        bottleneck queue full) and a page, plus the send backlog unless
        postcopy-preempt answers on its own channel; at most until the background
        push has brought everything over."""
        m = self.m
        page_ms = PAGE / self.pipe.main_bytes_s * 1e3
        backlog = 0.0 if m.postcopy_preempt else backlog_ms(m, self.cal, self.pipe,
                                                              bounded=True)
        return min(faults * (m.rtt_ms + m.queue_ms + backlog + page_ms), push_ms)

    def throttle(self, it: Iteration) -> int | None:
        """auto-converge's last throttle; None for strategies without auto-converge."""
        return it.throttle_pct if self.strategy == "precopy-tuned" else None

    def hot_pages(self) -> int:
        return self.m.hot_pages if self.m.hot_pages is not None else self.cal.postcopy_hot_pages


def _not_converging(c: _Context, it: Iteration) -> Prediction:
    usable = f"{_mb(c.resend.raw_bytes_s)}/s usable"
    dirty = f"dirty {_mb(it.dirty_bytes_s)}/s"
    if it.outcome == "stuck":
        limit = f"{dirty} ≥ {usable}"
        if it.throttle_pct:
            limit += f" even at {it.throttle_pct}% throttle"
    else:
        limit = f"over the {c.targets.timeout_s:g} s timeout, {dirty} vs {usable}"
        if it.throttle_pct:
            limit += f" at {it.throttle_pct}% throttle"
    return c.prediction(converges=False, throttle_pct=c.throttle(it), limit=limit,
                        notes=f"{c.pipe.describe()}; does not converge: {limit}")


#: QEMU's CPU_THROTTLE_TIMESLICE_NS: a throttled vCPU runs 10 ms, then sleeps.
THROTTLE_TIMESLICE_MS = 10.0


def throttle_gap_ms(pct: int) -> float:
    """How long a vCPU throttled to ``pct`` % sleeps at a time."""
    p = min(pct, 99) / 100
    return THROTTLE_TIMESLICE_MS * p / (1 - p) if p > 0 else 0.0


def _finish_precopy(c: _Context, it: Iteration, extra: str = "") -> Prediction:
    final_ms = c.push_ms(it.remaining_bytes)
    downtime = c.sw.qemu_ms + final_ms
    if "postcopy-ram" in c.settings.capabilities:
        # the source completes only once the destination answered on the return path
        downtime += c.cal.return_path_rtts * c.m.rtt_ms
    total = c.setup_ms + it.time_s * 1e3 + downtime
    if total > c.timeout_ms:
        return _not_converging(c, replace(it, outcome="timeout"))
    wire, stream = c.volume(it.page_bytes + it.remaining_bytes, it.zero_pages,
                            it.first_pass_bytes)
    throttle = f", throttled to {it.throttle_pct}%" if it.throttle_pct else ""
    # A throttled vCPU sleeps p/(1-p) of QEMU's 10 ms slice at a time: the
    # client sees those sleeps as gaps before the switchover comes.
    gap = throttle_gap_ms(it.throttle_pct or 0)
    if gap:
        throttle += f" (vCPU asleep {gap:.0f} ms at a time)"
    notes = (f"{c.pipe.describe()}; {it.passes} pass{'es' if it.passes > 1 else ''}{throttle};"
             f" final delta {_mb(it.remaining_bytes)} in {final_ms:.0f} ms "
             f"(downtime-limit {c.settings.parameters['downtime-limit']} ms){extra}")
    return c.prediction(converges=True, total_ms=total,
                        outage_ms=max(downtime + c.sw.after_ms, gap), downtime_ms=downtime, bytes=wire, ram_stream_bytes=stream,
                        rounds=it.passes + 2, throttle_pct=c.throttle(it), notes=notes)


def _precopy(c: _Context) -> Prediction:
    params = c.settings.parameters
    initial = params.get("cpu-throttle-initial")
    it = iterate(c.m, c.cal, c.pipe, c.resend, threshold_bytes=c.threshold_bytes,
                 throttle_initial=None if initial is None else int(initial),
                 throttle_max=int(params.get("max-cpu-throttle", THROTTLE_MAX_PCT)),
                 limit_s=(c.timeout_ms - c.setup_ms) / 1e3)
    if it.outcome != "converged":
        return _not_converging(c, it)
    return _finish_precopy(c, it)


def _postcopy_finish(c: _Context, *, other_ms: float, sent: float, first_pass: float,
                     remaining: float, zero_pages: int, faults: float, passes: int,
                     lead: str) -> Prediction:
    """The postcopy part: switch now, push ``remaining`` page bytes, fault in hot pages.

    ``other_ms``: time spent before (precopy passes) or besides (zero-page records) the push.
    """
    push_ms = c.push_ms(remaining)
    stall = c.fault_stall_ms(faults, push_ms)
    downtime = c.sw.qemu_ms
    total = c.setup_ms + other_ms + downtime + push_ms + c.m.rtt_ms
    wire, stream = c.volume(sent + remaining, zero_pages, first_pass)
    late = (f"; exceeds the {c.targets.timeout_s:g} s timeout, but cannot be abandoned"
            if total > c.timeout_ms else "")
    notes = (f"{c.pipe.describe()}; {lead}; {faults:.0f} remote faults stall {stall:.0f} ms; "
             f"the VM is lost if the destination fails before the push ends{late}")
    return c.prediction(converges=True, total_ms=total,
                        outage_ms=downtime + c.sw.after_ms + stall, downtime_ms=downtime,
                        bytes=wire, ram_stream_bytes=stream, rounds=passes + 2, notes=notes)


def _postcopy(c: _Context) -> Prediction:
    zero_pages, extra_s = pass_one_extra_s(c.m, c.cal, c.pipe)
    return _postcopy_finish(c, other_ms=extra_s * 1e3, sent=0.0,
                            first_pass=float(c.m.nonzero_bytes),
                            remaining=float(c.m.nonzero_bytes), zero_pages=zero_pages,
                            faults=c.hot_pages(), passes=0,
                            lead=f"pushes {_mb(c.m.nonzero_bytes)} after an immediate switch")


def _hybrid(c: _Context) -> Prediction:
    it = iterate(c.m, c.cal, c.pipe, c.resend, threshold_bytes=c.threshold_bytes,
                 throttle_initial=None, limit_s=math.inf, switch_on_stall=True,
                 switch_after_s=c.targets.postcopy_budget_s)
    if it.outcome == "converged":
        return _finish_precopy(c, it, extra="; completes as precopy, never switches")
    faults = c.hot_pages() * c.cal.postcopy_hot_written_fraction
    lead = (f"{it.passes} precopy pass{'es' if it.passes > 1 else ''} "
            f"({it.time_s:.1f} s), then pushes the {_mb(it.remaining_bytes)} left")
    return _postcopy_finish(c, other_ms=it.time_s * 1e3, sent=it.page_bytes,
                            first_pass=it.first_pass_bytes, remaining=it.remaining_bytes,
                            zero_pages=it.zero_pages, faults=faults, passes=it.passes,
                            lead=lead)


def predict(strategy: Strategy, m: Measurements, targets: Targets = Targets(),
            cal: Calibration = Calibration()) -> Prediction:
    """The model's expectation for one strategy (pure: no I/O)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown memory strategy {strategy!r}", field="strategy")
    c = _Context(strategy, m, targets, cal)
    if strategy in ("precopy", "precopy-tuned"):
        return _precopy(c)
    return _postcopy(c) if strategy == "postcopy" else _hybrid(c)


def predict_all(m: Measurements, targets: Targets = Targets(),
                cal: Calibration = Calibration()) -> list[Prediction]:
    """One prediction per strategy, in ``STRATEGIES`` order."""
    return [predict(s, m, targets, cal) for s in STRATEGIES]

