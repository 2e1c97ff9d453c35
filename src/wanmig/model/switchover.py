"""The fixed costs of a switchover, and the client-visible outage they add up to.

From the moment the source stops the guest until a client at the source site
gets an answer again (the client stays put: DESIGN.md's probes)::

    QEMU's downtime  = fixed (stop, pre-switchover handshake, final bitmap sync)
                     + multifd's sync at completion                  (multifd only)
                     + final RAM delta / raw rate                    (precopy family)
                     + device state / main-stream rate
    then             + backlog (the send buffers drain: QEMU says "completed" once
                       the last bytes are in its sockets; only when the network
                       is the bottleneck)
                     + one-way delay (the last byte reaches the destination)
                     + multifd's load at the destination             (multifd only)
                     + resume (``cont``; under TCG the migrated guest's cold start)
                     + reply one-way (B's first answer crosses back to the client)
                     + postcopy fault stall                          (postcopy family)

Each term was measured on QEMU 10.0 with the record's ``switchover_timeline``
(docs/design.md, "Where a switchover's time goes"); the defaults in
``inputs.Calibration`` say from which runs.  The l2-extend mode moves the
VM's frames to B's tap at the switchover, so no relearn waits for B's
announcement: the client's requests wait in B's tap queue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .inputs import Calibration, Measurements
from .link import Pipe


@dataclass(frozen=True)
class Switchover:
    """The parts of an outage that do not depend on how much RAM is left, in ms."""

    fixed_ms: float
    multifd_sync_ms: float
    device_ms: float
    backlog_ms: float
    one_way_ms: float
    multifd_load_ms: float
    resume_ms: float
    reply_ms: float

    @property
    def qemu_ms(self) -> float:
        """QEMU's downtime (source side) without a final RAM delta."""
        return self.fixed_ms + self.multifd_sync_ms + self.device_ms

    @property
    def after_ms(self) -> float:
        """From QEMU's completion at the source until the client hears the guest again."""
        return (self.backlog_ms + self.one_way_ms + self.multifd_load_ms + self.resume_ms
                + self.reply_ms)

    @property
    def overhead_ms(self) -> float:
        """The whole outage of a switchover with nothing left to send."""
        return self.qemu_ms + self.after_ms


def backlog_ms(m: Measurements, cal: Calibration, pipe: Pipe, *, bounded: bool) -> float:
    """Time for the data already queued in the send buffers to leave.

    A network-bound stream keeps its sndbuf full and the bottleneck queue full,
    so anything written now waits ``send_backlog_rtts`` loaded RTTs; with the
    socket's unsent data ``bounded`` (tcp_notsent_lowat) only that much and the
    bottleneck queue.  When QEMU's rate limit or the CPU binds, QEMU waits
    instead and the buffers stay empty.
    """
    if not pipe.network_bound:
        return 0.0
    if bounded:
        return cal.notsent_lowat_bytes / pipe.main_bytes_s * 1e3 + m.queue_ms
    return cal.send_backlog_rtts * (m.rtt_ms + m.queue_ms)


def switchover(m: Measurements, cal: Calibration, pipe: Pipe, *,
               bounded_backlog: bool, multifd: bool) -> Switchover:
    one_way = m.rtt_ms / 2
    return Switchover(fixed_ms=cal.switchover_fixed_ms(m.accel),
                      multifd_sync_ms=cal.multifd_sync_ms if multifd else 0.0,
                      device_ms=cal.device_state_bytes / pipe.main_bytes_s * 1e3,
                      backlog_ms=backlog_ms(m, cal, pipe, bounded=bounded_backlog),
                      one_way_ms=one_way,
                      multifd_load_ms=cal.multifd_load_ms if multifd else 0.0,
                      resume_ms=cal.resume_overhead_ms(m.accel),
                      reply_ms=cal.reply_one_way * one_way)


#: The longest WAN outage a switchover rides out before the engine gives up on it.
SWITCHOVER_RIDE_OUT_S = 3.0
#: Linux's smallest retransmission timeout (TCP_RTO_MIN).
TCP_RTO_MIN_S = 0.2
#: A switchover is never given less than this.
SWITCHOVER_FLOOR_S = 10.0
#: Ethernet-sized TCP segment payload, for slow start's round count.
MSS_BYTES = 1448


def switchover_timeout_s(*, target_outage_ms: float, rtt_ms: float, rate_bit_s: float,
                         backlog_bytes: int) -> float:
    """How long the engine waits for the destination to load the last bytes.

    Long enough to ride out a ``SWITCHOVER_RIDE_OUT_S`` outage of the link:
    TCP retransmits after RTO, 3 RTO, 7 RTO, ... so the first retransmission
    after an outage of D seconds comes at most 2 D + RTO after it began; then
    the congestion window restarts from one segment, and slow start needs
    log2(backlog / MSS) round trips before what was queued (``backlog_bytes``:
    the send buffer and what is in flight) has left at the link's rate; and
    the outage QEMU itself is allowed (the target), twice over.  Never less
    than ``SWITCHOVER_FLOOR_S``: of the order of ten seconds on every profile
    here, so a VM whose last bytes are stuck behind a long outage is not left
    paused for a minute -- the engine fences the destination and resumes the
    source instead.
    """
    rtt_s = rtt_ms / 1000.0
    rto_s = max(TCP_RTO_MIN_S, rtt_s + TCP_RTO_MIN_S)
    retransmit_s = 2 * SWITCHOVER_RIDE_OUT_S + rto_s
    slow_start_s = math.log2(max(2.0, backlog_bytes / MSS_BYTES)) * rtt_s
    drain_s = backlog_bytes * 8 / max(rate_bit_s, 1.0)
    bound = retransmit_s + slow_start_s + drain_s + 2 * target_outage_ms / 1000.0
    return max(SWITCHOVER_FLOOR_S, round(bound, 1))
