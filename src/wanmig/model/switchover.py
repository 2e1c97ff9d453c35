"""The fixed costs of a switchover, and the client-visible outage they add up to.

From the moment the source stops the guest until a client at the source site
gets an answer again (the client stays put: DESIGN.md's probes)::

    QEMU's downtime  = fixed (stop, sync, pre-switchover handshake, device save/load)
                     + backlog (send buffers drain before the last bytes leave;
                       only when the network is the bottleneck)
                     + final RAM delta / raw rate       (precopy family only)
                     + device state / main-stream rate
    then             + one-way delay (the last byte reaches the destination)
                     + resume overhead (TCG re-translates code; KVM little)
                     + L2 relearn (the announce crosses back to the source site)
                     + postcopy fault stall               (postcopy family only)

Assumes the client sits at the source site and that the outage ends with the
first answer, so the destination's answer path costs one more one-way delay,
counted in the relearn term.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inputs import Calibration, Measurements
from .link import Pipe


@dataclass(frozen=True)
class Switchover:
    """The parts of an outage that do not depend on how much RAM is left, in ms."""

    fixed_ms: float
    backlog_ms: float
    device_ms: float
    one_way_ms: float
    resume_ms: float
    relearn_ms: float

    @property
    def qemu_ms(self) -> float:
        """QEMU's downtime (source side) without a final RAM delta."""
        return self.fixed_ms + self.backlog_ms + self.device_ms

    @property
    def after_ms(self) -> float:
        """From QEMU's completion until the client hears the guest again."""
        return self.one_way_ms + self.resume_ms + self.relearn_ms

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
               bounded_backlog: bool) -> Switchover:
    one_way = m.rtt_ms / 2
    return Switchover(fixed_ms=cal.switchover_fixed_ms(m.accel),
                      backlog_ms=backlog_ms(m, cal, pipe, bounded=bounded_backlog),
                      device_ms=cal.device_state_bytes / pipe.main_bytes_s * 1e3,
                      one_way_ms=one_way,
                      resume_ms=cal.resume_overhead_ms(m.accel),
                      relearn_ms=cal.l2_relearn_one_way * one_way)
