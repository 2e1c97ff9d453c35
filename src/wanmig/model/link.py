"""How fast a strategy's channels move guest pages across the link: the ``Pipe``.

One TCP stream carries ``stream_rate``: the least of

* the link:        ``link_rate / 8 * tcp_efficiency``,
* its window:      ``tcp_window_bytes / RTT`` (a long fat pipe with a shallow queue),
* its loss:        ``MSS / RTT * C / sqrt(p)`` (Mathis et al.),
* with TLS, the one thread encrypting it,

payload bytes per second (a measured one-stream goodput replaces the window and
loss estimates).  N streams (multifd) get ``min(link, N * stream_rate)``:
the window and loss limits are per stream, the link is shared.

A ``Pipe`` then says how many guest-page bytes per second ("raw" bytes: what
QEMU counts, rate-limits and compares with its downtime-limit) that makes, once
the per-page header, zstd, TLS and QEMU's ``max-bandwidth`` are applied.  QEMU
7.2 accounts multifd pages uncompressed (``multifd_send_pages``: pages x 4096 +
packet header, until 8.1's ``sent_bytes``), so its rate limit and bandwidth
estimate are in raw bytes even when the wire carries a third of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .inputs import PAGE, Calibration, Measurements, Strategy

#: QEMU 7.2's default max-bandwidth (134217728 B/s = 128 MiB/s, as ``query-migrate-parameters``
#: reports it), in migration-stream bytes.
QEMU_DEFAULT_MAX_BANDWIDTH = 128 << 20
#: The least precopy-tuned asks for: one stream fills a link that no per-stream
#: limit binds (continental: 93 % of the rate); more only where one stream falls short.
MIN_MULTIFD_CHANNELS = 1
#: The most under TCG.  On QEMU 10.0 with verify on, two channels came out whole
#: (5 of 5 runs, 20 MB/s writer) but no faster than one (17.2-19.8 s against
#: 17.4-19.9 s) on this 2-core, 100 Mbit/s testbed, so TCG keeps one.  (On QEMU 7.2
#: several channels resumed corrupted guests: docs/design.md, "Memory integrity".)
#: KVM hosts get as many as the link and the cores want.
TCG_MULTIFD_CHANNELS = 1


def line_bytes_s(m: Measurements) -> float:
    """The link's rate in bytes/s, headers included."""
    return m.link_rate_bit_s / 8


def stream_limits(m: Measurements, cal: Calibration) -> dict[str, float]:
    """Payload bytes/s one TCP stream could carry under each limit (inf: none).

    "link" is shared by all streams; the others hold per stream.  A measured
    one-stream goodput replaces the window and loss estimates.
    """
    rtt = m.rtt_s
    limits = {"link": line_bytes_s(m) * cal.tcp_efficiency, "tcp-window": math.inf,
              "loss": math.inf, "measured": math.inf, "tls-cpu": math.inf}
    if m.stream_goodput_bit_s is not None:
        limits["measured"] = m.stream_goodput_bit_s / 8
    elif rtt > 0:
        limits["tcp-window"] = cal.tcp_window_bytes / rtt
        if m.loss_pct > 0:
            limits["loss"] = cal.mss_bytes / rtt * cal.mathis_c / math.sqrt(m.loss_pct / 100)
    if m.tls:
        limits["tls-cpu"] = cal.tls_bytes_s_per_stream
    return limits


def streams_rate(m: Measurements, cal: Calibration, streams: int) -> tuple[float, str]:
    """Payload bytes/s ``streams`` parallel TCP streams carry, and what binds them."""
    limits = stream_limits(m, cal)
    per_stream, why = min((v, k) for k, v in limits.items() if k != "link")
    if streams * per_stream < limits["link"]:
        return streams * per_stream, why
    return limits["link"], "link"


def compress_cores(m: Measurements, cal: Calibration) -> float:
    """Host cores left for multifd compression threads next to the running guest."""
    return max(0.5, m.cpus - cal.guest_busy_cores)


def multifd_channels(m: Measurements, cal: Calibration) -> int:
    """Channels for precopy-tuned: enough streams to fill the link despite per-stream
    limits, and one zstd thread per core that helps
    keep up with the link; at most ``max_multifd_channels`` (under TCG, one)."""
    link = stream_limits(m, cal)["link"]
    per_stream, _ = streams_rate(m, cal, 1)
    streams = math.ceil(link / per_stream - 1e-9)
    threads = min(math.ceil(link * m.compress_ratio / cal.zstd_bytes_s_per_core - 1e-9),
                  math.ceil(compress_cores(m, cal)))
    cap = TCG_MULTIFD_CHANNELS if m.accel == "tcg" else cal.max_multifd_channels
    return min(max(MIN_MULTIFD_CHANNELS, streams, threads), cap)


def zstd_bytes_s(m: Measurements, cal: Calibration, channels: int) -> float:
    """Guest-page bytes/s the multifd threads can compress."""
    return cal.zstd_bytes_s_per_core * min(channels, compress_cores(m, cal))


def tuned_max_bandwidth(m: Measurements, cal: Calibration) -> int:
    """precopy-tuned's max-bandwidth, set where it cannot bind.

    QEMU 7.2 counts multifd pages uncompressed against max-bandwidth, so the
    line rate would cap the pages at the line rate and waste zstd.  The cap is
    the larger of line rate x compression ratio and what the zstd threads can
    compress: the link or the CPU binds first, and QEMU's default 32 MiB/s
    cap is gone.  (It also stays harmless if the ratio given is 1.0 unmeasured.)
    """
    channels = multifd_channels(m, cal)
    return math.ceil(max(line_bytes_s(m) * m.compress_ratio, zstd_bytes_s(m, cal, channels)))


@dataclass(frozen=True)
class Pipe:
    """A strategy's channels, reduced to what the round model needs.

    ``raw_bytes_s``: guest-page bytes per second (QEMU's units);
    ``wire_per_raw``: WAN bytes per guest-page byte (header, zstd, TLS);
    ``main_bytes_s``: WAN payload bytes/s of the one main stream, which carries
    zero-page records and the device state;
    ``network_bound``: the network (not max-bandwidth or a CPU) is the
    bottleneck, so the send buffers are full (see ``send_backlog_rtts``).
    """

    streams: int
    compression: bool
    raw_bytes_s: float
    wire_per_raw: float
    main_bytes_s: float
    bottleneck: str
    #: Page bytes/s the sending thread's CPU allows (inf: not modelled as binding); it
    #: also scans the zero pages, which overlaps with the sending when the network binds.
    cpu_bytes_s: float = math.inf

    @property
    def network_bound(self) -> bool:
        return self.bottleneck in ("link", "tcp-window", "loss", "measured")

    def describe(self) -> str:
        zstd = ", zstd" if self.compression else ""
        return (f"{self.streams} stream{'s' if self.streams > 1 else ''}{zstd}, "
                f"{self.raw_bytes_s / 1e6:.1f} MB/s of pages ({self.bottleneck}-bound)")


def _header(cal: Calibration) -> float:
    return 1 + cal.page_header_bytes / PAGE


def sender_cpu_bytes_s(m: Measurements, cal: Calibration) -> float:
    """Page bytes/s QEMU's migration thread sends on one stream when its CPU binds: under
    TCG (``tcg_page_stream_bytes_s``, TLS in series); not modelled under KVM."""
    if m.accel != "tcg":
        return math.inf
    seconds_per_byte = 1 / cal.tcg_page_stream_bytes_s
    if m.tls:
        seconds_per_byte += 1 / cal.tls_bytes_s_per_stream
    return 1 / seconds_per_byte


def _single(m: Measurements, cal: Calibration, max_bandwidth: float | None) -> Pipe:
    """One stream, no compression; ``max_bandwidth`` caps stream bytes (None: no cap)."""
    payload, why = streams_rate(m, cal, 1)
    stream = payload / cal.tls_factor(m)
    if max_bandwidth is not None and max_bandwidth < stream:
        stream, why = max_bandwidth, "max-bandwidth"
    raw, cpu = stream / _header(cal), sender_cpu_bytes_s(m, cal)
    if cpu < raw:
        raw, why = cpu, "qemu-cpu"
    return Pipe(streams=1, compression=False, raw_bytes_s=raw,
                wire_per_raw=_header(cal) * cal.tls_factor(m),
                main_bytes_s=payload / cal.tls_factor(m), bottleneck=why, cpu_bytes_s=cpu)


def _multifd(m: Measurements, cal: Calibration, ratio: float) -> Pipe:
    """multifd + zstd: pages compressed by ``ratio``, headers not."""
    channels = multifd_channels(m, cal)
    payload, why = streams_rate(m, cal, channels)
    wire_per_raw = (1 / ratio + cal.page_header_bytes / PAGE) * cal.tls_factor(m)
    raw = payload / wire_per_raw
    for limit, rate in (("compression", zstd_bytes_s(m, cal, channels)),
                        ("max-bandwidth", tuned_max_bandwidth(m, cal) / _header(cal))):
        if rate < raw:
            raw, why = rate, limit
    main, _ = streams_rate(m, cal, 1)
    return Pipe(streams=channels, compression=True, raw_bytes_s=raw,
                wire_per_raw=wire_per_raw, main_bytes_s=main / cal.tls_factor(m),
                bottleneck=why)


def pipe_for(strategy: Strategy, m: Measurements, cal: Calibration, *,
             resend: bool = False) -> Pipe:
    """The channels each strategy runs on (see ``settings.migration_settings``), for
    the first pass's pages, or (``resend``) for the pages the guest dirtied since,
    which compress by ``dirty_compress_ratio`` instead."""
    if strategy == "precopy":
        return _single(m, cal, QEMU_DEFAULT_MAX_BANDWIDTH)
    if strategy == "precopy-tuned":
        return _multifd(m, cal, m.dirty_compress_ratio if resend else m.compress_ratio)
    if strategy == "hybrid":
        # max-bandwidth = line rate: one TCP stream never reaches it
        return _single(m, cal, line_bytes_s(m))
    return _single(m, cal, None)  # postcopy: max-postcopy-bandwidth 0 = unlimited
