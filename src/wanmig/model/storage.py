"""Predicting the disk's move, and choosing a storage strategy: what ``[storage]
strategy = "auto"`` runs.

Pure, like the memory model: the inputs (``DiskMeasurements``) are taken
just before the copy -- what A's guest has written so far (A's overlay),
how fast it dirties new blocks (a dirty bitmap over a short window, at the
copy's 64 KiB granularity), the link's drain rate and RTT -- and every
prediction is a function of them and the constants below, each measured
here (sources beside them).

Per strategy (``StoragePrediction``), with ``O`` the overlay, ``D`` the dirty
rate, ``R`` the drain rate, ``M`` the memory copy's time::

    mirror    sends every allocated block, base included; libvirt's default
              copy mode is ready only once nothing is dirty, so against any
              writer it never converges (measured: docs/design.md)
    precopy   passes: O/R, then what was dirtied meanwhile, a ratio r = D/R
              each time; it throttles the guest when r >= 1 or when more than
              precopy.MAX_PASSES_UNTHROTTLED passes would be needed, or when D
              is above the disk's share of the budget while memory moves
              (its passes go on then); its last pass is in the outage
              (PRECOPY_SWITCH_MS)
    postcopy  nothing before memory; the outage grows by opening A's qcow2
              over the WAN (LAYER_ROUND_TRIPS x RTT); then B streams
              O + D M, depending on A until it is done
    hybrid    O in bulk before memory (no passes), the same layering in the
              outage, then B streams D (O/R + M)

Bytes are counted uncompressed: wancopy, which carries postcopy's and
hybrid's frozen images by default (``storage.transport``), compresses and
deduplicates, so for those two the bytes (and the copy times after them) are
upper bounds; the choice between strategies rests on outage, throttling and
the dependency on A before bytes, so the bound does not change it.

The choice, in order: a strategy B must be running by (``within_s``) rules
out those predicted later; one that throttles the guest or never converges
is taken only if nothing else is left; then the smallest added outage wins,
within ``OUTAGE_TIE_MS``; on a tie, the shorter time B depends on A (if A
fails then, the VM is lost: xNBD's weakness), then fewer bytes.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

StorageStrategy = Literal["mirror", "precopy", "postcopy", "hybrid"]
CANDIDATES: tuple[StorageStrategy, ...] = ("precopy", "hybrid", "postcopy")

#: precopy's paused last pass and the channel's close, and mirror's cancel: 120-180 ms
#: in bench storage runs 2-3 (continental, one run each).
PRECOPY_SWITCH_MS = 150.0
#: Opening a qcow2 over NBD reads its header, extensions, L1 and refcount tables one
#: after another: 482-485 ms at 50 ms RTT (``layer_steps_ms.open_overlay``, 2 runs),
#: about 10 round trips, plus the activation and reopen (3-7 ms).
LAYER_ROUND_TRIPS = 10
LAYER_FIXED_MS = 7.0
#: Passes precopy takes before it throttles regardless (``storage.precopy``).
MAX_PASSES_UNTHROTTLED = 8
#: What precopy leaves for its paused pass: DELTA_S of the link (``storage.precopy``).
DELTA_S = 0.05
#: Added outages this close are a tie.
OUTAGE_TIE_MS = 50.0
#: A drain rate with nothing measured: TCP's share of the link's rate with TLS (mirror's
#: 202 MB crossed at 91 Mbit/s on the 100 Mbit/s continental link, bench run 4).
DRAIN_SHARE = 0.9


class DiskMeasurements(BaseModel):
    """What the storage model is given, in bytes and seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    overlay_bytes: int = Field(ge=0)       # A's overlay: what the guest wrote over the base
    allocated_bytes: int = Field(ge=0)     # data anywhere in A's chain (what mirror sends)
    dirty_bytes_s: float = Field(ge=0)     # new dirty bytes/s (bitmap, 64 KiB granularity)
    drain_bytes_s: float = Field(gt=0)     # what the storage channel moves per second
    storage_share: float = Field(0.25, gt=0, le=1)  # the disk's share while memory moves
    rtt_ms: float = Field(ge=0)
    memory_s: float = Field(ge=0)          # the memory copy's time (an estimate)


class StoragePrediction(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: StorageStrategy
    converges: bool
    throttles: bool
    bytes: int                   # disk bytes that cross (resends included)
    before_memory_s: float       # copying before the memory copy can start
    dest_running_s: float        # from the copy's start until B runs
    outage_extra_ms: float       # what the disk adds to the client's outage
    depends_on_source_s: float   # after B runs, until B no longer reads from A
    passes: int | None = None
    note: str = ""


class StorageDecision(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    chosen: StorageStrategy
    reason: str
    measurements: DiskMeasurements
    predictions: list[StoragePrediction]

    def prediction(self) -> StoragePrediction:
        return next(p for p in self.predictions if p.strategy == self.chosen)


def _layer_ms(m: DiskMeasurements) -> float:
    return LAYER_ROUND_TRIPS * m.rtt_ms + LAYER_FIXED_MS


def _precopy(m: DiskMeasurements) -> StoragePrediction:
    """Passes of ratio r = D/R from O down to what crosses in DELTA_S."""
    r = m.dirty_bytes_s / m.drain_bytes_s
    threshold = m.drain_bytes_s * DELTA_S
    passes, sent, left = 1, float(m.overlay_bytes), m.overlay_bytes * r
    seconds = m.overlay_bytes / m.drain_bytes_s
    if left > threshold and r < 1:
        more = math.ceil(math.log(threshold / left) / math.log(r)) if r > 0 else 0
        passes += more
        sent += left * (1 - r ** more) / (1 - r)
        seconds += left * (1 - r ** more) / (1 - r) / m.drain_bytes_s
    throttles = left > threshold and (r >= 1 or passes > MAX_PASSES_UNTHROTTLED)
    # passes go on while memory moves, at the disk's share of the link: a guest that
    # dirties faster than that is throttled then (bench storage run 5: a 5 MB/s
    # rewriter, 3.9 MB/s of new blocks, against 25 % of 100 Mbit/s)
    during_memory = m.drain_bytes_s * m.storage_share
    throttles_later = m.dirty_bytes_s >= during_memory
    sent += m.dirty_bytes_s * m.memory_s
    note = f"{passes} passes at a ratio of {r:.2f}"
    if throttles:
        note = f"the guest dirties {r:.0%} of the drain rate: it would be throttled"
    elif throttles_later:
        note = (f"the guest dirties {m.dirty_bytes_s / during_memory:.0%} of the disk's "
                "share while memory moves: it would be throttled then")
    return StoragePrediction(
        strategy="precopy", converges=True, throttles=throttles or throttles_later,
        bytes=int(sent), before_memory_s=seconds, dest_running_s=seconds + m.memory_s,
        outage_extra_ms=PRECOPY_SWITCH_MS, depends_on_source_s=0.0, passes=passes,
        note=note)


def _mirror(m: DiskMeasurements) -> StoragePrediction:
    seconds = m.allocated_bytes / m.drain_bytes_s
    converges = m.dirty_bytes_s == 0
    return StoragePrediction(
        strategy="mirror", converges=converges, throttles=False,
        bytes=int(m.allocated_bytes + m.dirty_bytes_s * (seconds + m.memory_s)),
        before_memory_s=seconds, dest_running_s=seconds + m.memory_s,
        outage_extra_ms=PRECOPY_SWITCH_MS, depends_on_source_s=0.0,
        note="sends the base too" + ("" if converges else "; never ready against a writer "
                                     "in libvirt's default copy mode"))


def _postcopy(m: DiskMeasurements) -> StoragePrediction:
    streamed = m.overlay_bytes + m.dirty_bytes_s * m.memory_s
    return StoragePrediction(
        strategy="postcopy", converges=True, throttles=False, bytes=int(streamed),
        before_memory_s=0.0, dest_running_s=m.memory_s, outage_extra_ms=_layer_ms(m),
        depends_on_source_s=streamed / m.drain_bytes_s,
        note="B reads A's whole overlay over the WAN after it runs")


def _hybrid(m: DiskMeasurements) -> StoragePrediction:
    bulk_s = m.overlay_bytes / m.drain_bytes_s
    delta = m.dirty_bytes_s * (bulk_s + m.memory_s)
    return StoragePrediction(
        strategy="hybrid", converges=True, throttles=False, bytes=int(m.overlay_bytes + delta),
        before_memory_s=bulk_s, dest_running_s=bulk_s + m.memory_s,
        outage_extra_ms=_layer_ms(m), depends_on_source_s=delta / m.drain_bytes_s,
        note="the overlay once in bulk, the writes after it read and streamed by B")


PREDICTORS = {"mirror": _mirror, "precopy": _precopy, "postcopy": _postcopy,
              "hybrid": _hybrid}


def predict_storage(m: DiskMeasurements) -> list[StoragePrediction]:
    """Every strategy's prediction, mirror (the baseline) first."""
    return [PREDICTORS[s](m) for s in ("mirror", *CANDIDATES)]


def _brief(p: StoragePrediction) -> str:
    return (f"{p.strategy} +{p.outage_extra_ms:.0f} ms outage, B runs at "
            f"{p.dest_running_s:.1f} s, depends on A {p.depends_on_source_s:.1f} s, "
            f"{p.bytes / 1e6:.1f} MB" + (", throttles the guest" if p.throttles else ""))


def choose_storage(m: DiskMeasurements, within_s: float | None = None) -> StorageDecision:
    """The strategy for ``m`` by the rule in the module docstring (pure)."""
    predictions = predict_storage(m)
    pool = [p for p in predictions if p.strategy in CANDIDATES]
    why: list[str] = []
    if within_s is not None:
        in_time = [p for p in pool if p.dest_running_s <= within_s]
        if not in_time:
            in_time = [min(pool, key=lambda p: p.dest_running_s)]
            why.append(f"none has B running within {within_s:g} s: the soonest")
        else:
            why.append(f"B running within {within_s:g} s")
        pool = in_time
    gentle = [p for p in pool if p.converges and not p.throttles]
    if gentle:
        if len(gentle) < len(pool):
            why.append("without throttling the guest")
        pool = gentle
    least = min(p.outage_extra_ms for p in pool)
    near = [p for p in pool if p.outage_extra_ms <= least + OUTAGE_TIE_MS]
    # dependencies within a tenth of a second are a tie
    chosen = min(near, key=lambda p: (round(p.depends_on_source_s, 1), p.bytes,
                                      p.outage_extra_ms))
    why.append("the smallest added outage" if chosen.outage_extra_ms == least
               else f"within {OUTAGE_TIE_MS:.0f} ms of the smallest outage")
    if len(near) > 1:
        why.append("then the shortest dependency on A, then the fewest bytes")
    others = "; ".join(_brief(p) for p in predictions if p is not chosen)
    reason = (f"{chosen.strategy} ({', '.join(why)}): {_brief(chosen)}. "
              f"Dirty rate {m.dirty_bytes_s / 1e6:.2f} MB/s against a drain of "
              f"{m.drain_bytes_s / 1e6:.2f} MB/s, overlay {m.overlay_bytes / 1e6:.1f} MB. "
              f"Others: {others}")
    return StorageDecision(chosen=chosen.strategy, reason=reason, measurements=m,
                           predictions=predictions)
