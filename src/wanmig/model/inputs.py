"""What the model is told: measurements, targets and calibration constants.

Three frozen pydantic models, kept apart because they change at different
rates:

* ``Measurements``: taken just before a migration (guest memory scan, zstd
  sample, QEMU ``calc-dirty-rate``, the WAN link); new for every migration.
* ``Targets``: what the user asks for (client outage, time limits).
* ``Calibration``: constants of this testbed and of QEMU that the formulas
  need but no pre-migration measurement gives.  Each says where its default
  came from; "to be calibrated" marks guesses to be fitted from bench runs.
  Re-fitted on QEMU 10.0: the switchover's terms (multifd's sync and load, the
  cold resume) from runs that recorded ``switchover_timeline`` on
  ``continental`` (bench run 12 and single runs), the sender's CPU, the zero
  walk and the return path on ``intercontinental`` (bench run 13), the hot set
  on both; bench runs 14-15 checked them (README: totals within ±25 % on
  continental, outages short by up to 58 % for fast writers and on
  intercontinental).

All sizes are bytes, rates bytes/s unless the name says ``bit_s``, times ms
unless the name says ``_s``.  Every model round-trips through JSON (the
result record keeps them next to the prediction).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..parts import MEMORY

#: The memory strategies the model predicts ("auto" is the act of choosing one): the
#: parts table's ``modelled`` entries.
Strategy = str
STRATEGIES: tuple[Strategy, ...] = MEMORY.names("modelled")
#: Strategies after whose switchover the source no longer holds a runnable VM.
POSTCOPY_FAMILY: frozenset[str] = frozenset(MEMORY.names("postcopy"))

PAGE = 4096  # x86 target page: the unit of QEMU's dirty bitmap and migration stream


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Measurements(_Frozen):
    """The guest and the link, measured just before the migration starts."""

    ram_bytes: int = Field(gt=0, description="Guest RAM size.")
    nonzero_bytes: int = Field(
        ge=0, description="Bytes of guest RAM in non-zero pages (scan of guest memory); "
        "zero pages cost QEMU a 9-byte record each.")
    compress_ratio: float = Field(
        1.0, ge=1.0, description="zstd level-1 ratio (raw / compressed) on a sample of the "
        "non-zero pages.")
    dirty_compress_ratio: float = Field(
        1.0, ge=1.0, description="zstd ratio of the pages the guest rewrites, which precopy "
        "sends again; the survey cannot tell which pages those are, so 1.0 (incompressible, "
        "as the dirty workload's random data) unless known.")
    dirty_rate_bytes_s: float = Field(
        ge=0, description="QEMU calc-dirty-rate result (MB/s of distinct pages over its "
        "sample period) in bytes/s.")
    dirty_working_set_bytes: int | None = Field(
        None, ge=0, description="Bytes the guest keeps re-writing (bounds what a round can "
        "dirty); None: unknown, taken as the whole RAM.")
    hot_pages: int | None = Field(
        None, ge=0, description="Distinct pages the guest touches right after a postcopy "
        "switchover before it answers clients again; None: Calibration.postcopy_hot_pages.")
    link_rate_bit_s: float = Field(gt=0, description="Bottleneck rate of the WAN link.")
    rtt_ms: float = Field(ge=0, description="Idle round-trip time between the sites.")
    queue_ms: float = Field(
        20.0, ge=0, description="Bottleneck queue depth as drain time (the WAN profile's "
        "queue_ms): a saturated link adds this to the RTT.")
    loss_pct: float = Field(0.0, ge=0, lt=100, description="Random loss per packet.")
    stream_goodput_bit_s: float | None = Field(
        None, gt=0, description="Measured goodput of one TCP stream between the sites; when "
        "given it replaces the per-stream window and loss estimates (the link rate still "
        "bounds the sum of several streams).")
    cpus: int = Field(2, ge=1, description="Host cores the source QEMU (guest and "
                      "migration threads) runs on.")
    accel: Literal["tcg", "kvm"] = "tcg"
    # how the channels are set up (known, not measured)
    tls: bool = Field(False, description="Migration channels run TLS.")
    postcopy_preempt: bool = Field(
        True, description="postcopy-preempt is on (QEMU >= 7.1): page requests are answered "
        "on their own channel instead of behind the background stream.")

    @model_validator(mode="after")
    def _sizes_fit(self) -> "Measurements":
        if self.nonzero_bytes > self.ram_bytes:
            raise ValueError("nonzero_bytes exceeds ram_bytes")
        if (self.dirty_working_set_bytes is not None
                and self.dirty_working_set_bytes > self.ram_bytes):
            raise ValueError("dirty_working_set_bytes exceeds ram_bytes")
        return self

    @property
    def rtt_s(self) -> float:
        return self.rtt_ms / 1e3

    @property
    def working_set_bytes(self) -> int:
        """The bound on distinct bytes dirtied between two syncs."""
        if self.dirty_working_set_bytes is None:
            return self.ram_bytes
        return self.dirty_working_set_bytes


class Targets(_Frozen):
    """What the migration should achieve, and how long anyone waits for it."""

    target_outage_ms: float = Field(1000.0, gt=0, description="Largest acceptable "
                                    "client-visible outage.")
    timeout_s: float = Field(600.0, gt=0, description="The runner gives up on precopy after "
                             "this long: a longer prediction counts as not converging.")
    postcopy_budget_s: float | None = Field(
        30.0, gt=0, description="hybrid: switch to postcopy at the latest after this much "
        "precopy (mid-pass if need be), earlier when a pass after the first leaves more than "
        "0.8 of the previous pass's dirty bytes (memory/plan.py StallDetector); None: only "
        "on a stall.")
    tie_margin: float = Field(0.05, ge=0, le=1, description="Totals within this fraction of "
                              "the shortest count as a tie (precopy family then preferred).")


class Calibration(_Frozen):
    """Testbed and QEMU constants the formulas assume, with where each came from."""

    tcp_efficiency: float = Field(
        0.93, gt=0, le=1, description="Payload share of the link rate one TCP stream gets. "
        "bench-wan.json: 92.5-95.4 Mbit/s per 100 (forwarder back end, 50 ms RTT, 20 ms "
        "queue); TBF counts Ethernet headers, so 0.956 is the ceiling.")
    tcp_window_bytes: float = Field(
        2.68e6, gt=0, description="Effective per-stream window: one stream carries at most "
        "this per RTT. Fitted to bench-wan.json 'intercontinental' (150 ms, 250 Mbit/s, "
        "20 ms queue: 143 Mbit/s = 2.68 MB/RTT); stands in for CUBIC not filling a long "
        "fat pipe with a shallow queue. Binds no other bench profile.")
    mathis_c: float = Field(
        1.71, gt=0, description="Loss-limited stream rate = MSS/RTT * C/sqrt(p). Fitted to "
        "bench-wan.json 'lossy' (80 ms, 0.5 %, CUBIC: 3.51 Mbit/s); Reno's textbook C is "
        "1.22.")
    mss_bytes: int = Field(1448, gt=0, description="TCP payload per 1500-byte frame with "
                           "timestamps.")
    tls_overhead: float = Field(
        1.0014, ge=1.0, description="With TLS: wire bytes per migration-stream byte (TLS 1.3 "
        "records add 22 B per 16 KiB).")
    tls_bytes_s_per_stream: float = Field(
        85e6, gt=0, description="With TLS: what encrypting costs the one thread that sends "
        "a stream, as bytes/s in series with its other work (gnutls, AES-NI, sharing 2 cores "
        "with the guest). Fitted on intercontinental default precopy, idle guest: 8.6 s for "
        "the first pass with TLS against 7.4 s without (bench run 13, 3 runs each).")
    tls_handshake_rtts: float = Field(
        1.0, ge=0, description="With TLS: RTTs a TLS 1.3 handshake adds to setup.")
    setup_rtts: float = Field(
        1.0, ge=0, description="RTTs before the first page: TCP connect. To be calibrated "
        "against QEMU's setup-time.")
    setup_fixed_ms: float = Field(
        20.0, ge=0, description="QEMU's setup work (dirty logging on, RAM block list). "
        "To be calibrated against QEMU's setup-time.")
    zero_scan_bytes_s: float = Field(
        175e6, gt=0, description="Rate at which the sender walks zero pages (find dirty, "
        "buffer_is_zero, a record each: ~23 us a page), on the sender's CPU. Fitted to the "
        "CPU-bound first pass of an idle 512 MiB guest with 412 MB of zero pages on "
        "intercontinental (8.6 s with TLS; bench run 13); on continental, where the link "
        "binds, the walk overlaps with the sending (rounds.pass_one_extra_s).")
    tcg_page_stream_bytes_s: float = Field(
        20e6, gt=0, description="Under TCG: non-zero page bytes/s QEMU's migration thread "
        "sends on one stream without TLS when its CPU binds (2 cores: the guest's vCPU "
        "spins one, the WAN forwarder and the probes take their share). Fitted: resent "
        "pages moved at 15.1-16.8 MB/s with TLS on intercontinental (dirty guests, default "
        "precopy, bench run 13), i.e. 20 MB/s with TLS's cost taken out; one TCP stream "
        "there carries 26-29 MB/s.")
    hot_set_bytes: float = Field(
        1.5e6, ge=0, description="Without auto-converge, a pass never leaves less than "
        "this, however short the pass: the pages the guest's kernel and services re-dirty "
        "all the time (timers, stacks, network buffers under the client's load) stay in "
        "QEMU's bitmap. Idle and web guests hovered at 0.2-2.7 MB left round after round, "
        "median ~1.2-1.4 MB (hybrid, bench runs 12-14), whatever calc-dirty-rate read "
        "(0-2 MB/s), so hybrid's 1.2 MB threshold was met late or not before its budget. "
        "Not applied under auto-converge, whose throttle shrinks it.")
    return_path_rtts: float = Field(
        2.0, ge=0, description="With postcopy-ram on (hybrid) a migration that completes as "
        "precopy is completed only once the destination has loaded it and answered over the "
        "return path: STOP to completed took 315-751 ms on intercontinental (9 runs, bench "
        "run 13) where the model without it gives ~110 ms; the extra, median ~300 ms, "
        "taken as RTTs.")
    zero_page_stream_bytes: int = Field(
        9, ge=0, description="Stream bytes per zero page: 8-byte page header + 1 fill byte "
        "(QEMU 7.2 save_zero_page; detected in the main thread, also with multifd).")
    page_header_bytes: int = Field(
        8, ge=0, description="Stream bytes per sent page beyond its 4096: the 8-byte page "
        "header (multifd: offset per page in the packet header, same size).")
    device_state_bytes: int = Field(
        100_000, ge=0, description="Non-RAM device state sent after the guest stops (CPU, "
        "APIC, virtio queues). Fitted with switchover_fixed_ms_tcg to QEMU's downtime of "
        "20-23 ms for precopy-tuned on idle and web 512 MiB guests (bench run 2).")
    switchover_fixed_ms_tcg: float = Field(
        10.0, ge=0, description="Fixed part of QEMU's downtime under TCG: stop, final "
        "bitmap sync, pre-switchover event to migrate-continue, device save/load. "
        "Fitted to QEMU's downtime of 20-23 ms for idle and web guests (bench run 2).")
    switchover_fixed_ms_kvm: float = Field(
        25.0, ge=0, description="Same under KVM. To be calibrated (no KVM runs here).")
    multifd_sync_ms: float = Field(
        70.0, ge=0, description="With multifd: what completing the stream adds to QEMU's "
        "downtime at the source (multifd's final sync). QEMU 10.0, one channel, zstd: "
        "migrate-continue to completed took 96-113 ms (7 runs, TLS on or off, downtime-limit "
        "30 or 129 ms, idle guest) against 27 ms without multifd (switchover_timeline).")
    multifd_load_ms: float = Field(
        50.0, ge=0, description="With multifd: what the destination adds after the last "
        "byte arrived before it is loaded. QEMU 10.0: completed to loaded took 91-105 ms "
        "(7 runs) against 43 ms without multifd, where backlog and one-way account for ~55.")
    resume_overhead_ms_tcg: float = Field(
        165.0, ge=0, description="From the destination's cont until its guest answers, "
        "less the answer's one-way: under TCG a freshly migrated guest runs cold (new "
        "translation cache) with the client's queued requests to work off. QEMU 10.0, "
        "continental, idle/web: RESUME to the first echo answer was 25-531 ms, median 176 "
        "(8 runs with switchover_timeline) and ~200 (25 precopy-tuned runs of bench run 12); "
        "with the lighter probes and no WAN at all (bench run 17, answer one-way ~0) "
        "152-195 ms, median 171 (9 runs), so the guest's own cold start, not a probe backlog; "
        "the warm figure, stop and cont on one host (the TCG floor), is 11-29 ms.")
    resume_overhead_ms_kvm: float = Field(
        5.0, ge=0, description="Same under KVM. To be calibrated (no KVM runs here).")
    reply_one_way: float = Field(
        1.0, ge=0, description="One-way delays B's first answer takes to reach the client at "
        "the source site (l2-extend moved the VM's frames at the switchover, so the client's "
        "requests already wait at B).")
    notsent_lowat_bytes: int = Field(
        128 * 1024, ge=0, description="Unsent bytes a socket may hold at site A for every "
        "strategy but default precopy (the memory part's tcp_notsent_lowat).")
    send_backlog_rtts: float = Field(
        4.0, ge=0, description="Unsent data in the source's TCP send buffers during a bulk "
        "transfer with Linux's defaults (default precopy), as loaded RTTs of link time. "
        "Fitted: default precopy's idle/web outage was 493-548 ms against 157-160 ms for "
        "precopy-tuned with a 128 KiB limit (bench run 2). It "
        "delays the last delta at switchover, and every postcopy page request unless "
        "postcopy-preempt is on. To be calibrated.")
    postcopy_hot_pages: int = Field(
        64, ge=0, description="Distinct remote faults before the guest answers again after a "
        "postcopy switchover (kernel paths, network stack, service). Faults are serial "
        "(1 vCPU) and QEMU streams on from each faulted page, so neighbours arrive "
        "unasked. To be calibrated.")
    postcopy_hot_written_fraction: float = Field(
        0.5, ge=0, le=1, description="Share of those hot pages the guest writes: after a "
        "hybrid's precopy pass only they are still remote (hot written pages are taken to "
        "be dirty at the switch). To be calibrated.")
    zstd_bytes_s_per_core: float = Field(
        150e6, gt=0, description="zstd level-1 compression input rate of one core in a "
        "multifd thread (4 KiB pages, streaming API). To be calibrated on this host.")
    guest_busy_cores: float = Field(
        1.0, ge=0, description="Host cores the running guest keeps busy during migration "
        "(a busy 1-vCPU guest; under TCG its vCPU thread spins a core). Compression gets "
        "the rest, never less than half a core.")
    max_multifd_channels: int = Field(8, ge=1, description="Upper bound on multifd channels "
                                      "precopy-tuned asks for.")

    def tls_factor(self, m: Measurements) -> float:
        return self.tls_overhead if m.tls else 1.0

    def switchover_fixed_ms(self, accel: str) -> float:
        return self.switchover_fixed_ms_tcg if accel == "tcg" else self.switchover_fixed_ms_kvm

    def resume_overhead_ms(self, accel: str) -> float:
        return self.resume_overhead_ms_tcg if accel == "tcg" else self.resume_overhead_ms_kvm
