"""The result record every migration writes (DESIGN.md), as pydantic models.

Reports and checks are built from the saved JSON, never from live objects, so
every model round-trips: ``ResultRecord.model_validate_json(path.read_text())``.
Sizes are in bytes, times in milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .fileio import atomic_write
from .wan.profiles import LinkProfile

Status = Literal["completed", "rolled_back", "failed"]
PHASES = ("prepare", "storage", "memory", "switchover", "redirect", "finish")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class RunEvent(_Model):
    name: str
    at_ms: float


class WanInfo(_Model):
    """The inter-site link as set (the scenario's ``LinkProfile``, resolved once) and as
    measured just before the migration."""

    profile: str = "none"
    backend: str | None = None           # the emulator that ran: forwarder or netem
    link: LinkProfile | None = None      # None: a plain veth between the sites
    client_link: LinkProfile | None = None
    rtt_measured_ms: float | None = None
    goodput_mbit: float | None = None    # one TCP stream, measured (paced strategies)

    @property
    def rtt_ms(self) -> float | None:
        """The RTT the link is set to."""
        return self.link.rtt_ms if self.link else None

    @property
    def rate_mbit(self) -> float | None:
        return self.link.rate_mbit if self.link else None


class VmInfo(_Model):
    ram_mib: int
    disk_mib: int
    workload: str
    accel: str | None = None
    qemu_version: str | None = None   # QEMU's own --version line, of the binary that ran
    boot_ms: float | None = None
    workload_detail: dict[str, Any] | None = None  # dirty: size/rate; web: the load's report
    #: STOP / RESUME as each QEMU announced them, ms on the run state's clock: when
    #: each copy ran, from QEMU's own word.
    source_events: list[RunEvent] | None = None
    destination_events: list[RunEvent] | None = None


class MemoryResult(_Model):
    strategy: str
    total_ms: float | None = None
    downtime_ms: float | None = None
    setup_ms: float | None = None
    bytes: int | None = None
    rounds: int | None = None
    pages_per_second: float | None = None
    mbps: float | None = None
    converged: bool | None = None
    postcopy: bool | None = None            # QEMU switched to postcopy
    postcopy_reason: str | None = None       # why (hybrid: stall or budget)
    postcopy_requests: int | None = None     # pages the destination faulted in
    #: Postcopy recovered after its link stalled or broke (``QemuMigration._recover``):
    #: ``[{"how": "stalled"|"broken", "tries": resume attempts, "paused_ms"}]``.
    postcopy_recoveries: list[dict[str, Any]] | None = None
    multifd_bytes: int | None = None
    #: Bytes site A sent on the inter-site link from the start of ``memory`` to the
    #: end of ``finish``: the migration stream as it crossed the WAN (compressed,
    #: encrypted, with TCP/IP headers), plus the client's few requests after switchover.
    #: (QEMU 10's own ``bytes`` counts multifd pages after compression.)
    wire_bytes: int | None = None
    cpu_throttle_pct: int | None = None      # auto-converge's last throttle
    tls: bool | None = None
    plan: dict[str, Any] | None = None       # capabilities and parameters used
    #: precopy-tuned and auto: the guest survey, the model's measurements and its
    #: prediction for the plan run ("predicted"); auto also every strategy's
    #: prediction, the choice ("chosen") and why ("reason").
    decision: dict[str, Any] | None = None
    #: The migration as QEMU reported it, one row per ``query-migrate`` poll (every
    #: 250 ms): ms since ``migrate``, dirty-sync-count, RAM bytes still dirty, bytes
    #: sent, auto-converge's throttle %.  What a model is calibrated against.
    trace: list[tuple[float, int, int, int, int]] | None = None


class StorageResult(_Model):
    strategy: str = "none"
    note: str | None = None
    total_ms: float | None = None            # the copy's start until the disk was in sync at B
    ready_ms: float | None = None            # ... until the first full pass (mirror: ready)
    time_to_dest_running_ms: float | None = None   # the copy's start until B ran
    bytes_on_wire: int | None = None         # the storage channels' TCP payload (TLS included)
    copied_bytes: int | None = None          # disk bytes the copy moved (resends included)
    disk_bytes: int | None = None            # the source disk's allocated bytes
    #: What the copy left off the wire (``storage.nbdcopy.NbdCopy.reduction``).
    zero_bytes_skipped: int | None = None
    dedup_bytes_skipped: int | None = None
    compress_ratio: float | None = None
    #: ``storage.transport``, and each wancopy's summary by its label (bulk, fetch).
    transport: str | None = None
    wancopy: dict[str, dict[str, Any]] | None = None
    #: What the source disk holds (``storage.disk.DiskFacts.summary``).
    disk: dict[str, int] | None = None
    tls: bool | None = None
    passes: int | None = None                # precopy: copy passes (the bulk one included)
    last_delta_bytes: int | None = None      # ... what the last, with the source paused, moved
    write_throttle_bps: int | None = None    # ... the guest's writes were throttled to this
    throttled_after_ms: float | None = None  # ... this long after the copy began
    layer_ms: float | None = None            # postcopy: A's overlay put under B's disk
    layer_steps_ms: dict[str, float] | None = None   # ... step by step
    stream_ms: float | None = None           # ... the stream after B ran
    #: ... what A's image held for it to copy: an upper bound, since the stream skips
    #: a block B's guest rewrote first (``bytes_on_wire`` is what crossed)
    streamed_bytes: int | None = None
    fetch_ms: float | None = None            # ... ``storage.fetch``: A's image fetched whole
    fetch_bytes: int | None = None           # ... and what that put on A's WAN interface
    fetch_skipped: str | None = None         # ... why a fetch asked for did not run
    bulk_bytes: int | None = None            # hybrid: A's writes before the copy, sent in bulk
    #: auto: the strategy it ran, why, what it measured and predicted (``model.storage``).
    chosen: str | None = None
    reason: str | None = None
    measurements: dict[str, Any] | None = None
    predictions: list[dict[str, Any]] | None = None
    predicted: dict[str, Any] | None = None
    #: The guest's disk write latency (``vm.disk_write_mbps``; ``storage.diskio``):
    #: during the copy (until the switchover), and before it, as a reference.
    guest_io_p50_ms: float | None = None
    guest_io_p99_ms: float | None = None
    guest_io_writes: int | None = None
    guest_io_before_p50_ms: float | None = None
    guest_io_before_p99_ms: float | None = None
    guest_io_before_writes: int | None = None


class NetworkResult(_Model):
    mode: str
    client_outage_ms: float | None = None
    tcp_survived: bool | None = None
    new_conn_ms: float | None = None
    probe: dict[str, Any] | None = None
    #: What the client got between the engine's marks (``ProbeWindow.summary``): before
    #: the migration (until ``migration-start``: is the guest keeping up with the probe at
    #: all?), during the copy (until ``switchover-done``), after it (until ``stop``).
    probe_windows: list[dict[str, Any]] | None = None
    #: The UDP echo's interval in this run (``probe.interval_ms``, or by accelerator).
    probe_interval_ms: float | None = None
    #: What pausing and resuming the guest alone costs the client here (under TCG: tens
    #: of ms), measured on one site without migrating (``bench/floor.py``): set by
    #: ``wanmig bench memory`` from its calibration before the first run; None in a plain run.
    tcg_floor_ms: float | None = None
    #: What the client saw beyond the largest gap.  The median UDP echo RTT before the
    #: migration and after the switchover (path stretch: a tunnelled path goes through A);
    #: echoes unanswered over the whole run, and of those sent from 1 s before the source
    #: stopped to 1 s after the destination resumed; new HTTP connections that did not
    #: complete within 1 s (a client with a 1 s timeout saw them fail).
    rtt_before_ms: float | None = None
    rtt_after_ms: float | None = None
    udp_lost: int | None = None
    udp_lost_switchover: int | None = None
    http_failed_1s: int | None = None
    #: ``route``: from B's announcement until the client's site routed the VM's /32 via
    #: B, and how long the BGP sessions took to come up before the migration.
    route_switch_ms: float | None = None
    bgp_sessions_up_ms: float | None = None
    #: ``route``: the client's kernel route to the VM once BGP converged (``ip route get``).
    client_route: str | None = None
    #: ``dns-tunnel``: the record's lowered TTL, the VM's name and its address at B; how
    #: long the signed update took from B, and from it until the client's resolver
    #: answered the new address (``new_conn_ms`` is then from B's resume until a new
    #: connection by name was answered at the new address).
    dns_ttl_s: int | None = None
    dns_name: str | None = None
    dns_new_address: str | None = None
    dns_update_ms: float | None = None
    dns_switch_ms: float | None = None


class IntegrityResult(_Model):
    """What the guest's integrity log (and the destination's disk counters) showed."""

    ok: bool | None = None                   # no gap, bad, malformed or reordered record
    disk_match: bool | None = None
    guest_log_gaps: int | None = None
    guest_log_records: int | None = None
    guest_log_bad_checksums: int | None = None
    guest_log_malformed: int | None = None
    guest_log_out_of_order: int | None = None   # what a stale copy resumed leaves
    guest_max_write_gap_ms: float | None = None
    #: Write requests the guest made to its disk at B (QEMU's blockstats before B
    #: stopped): the guest kept writing after the switchover.
    destination_disk_writes: int | None = None
    #: The ``dirty`` workload's own memory check at B (``integrity.memcheck_from_console``):
    #: whole sweeps of its working set that started at B, and the bad pages (stale or
    #: corrupted) the guest found there; None where not checked, or not done.
    guest_memory_sweeps: int | None = None
    guest_memory_errors: int | None = None
    #: Verify mode (``memory.verify``): both guests' RAM compared page by page
    #: before B ran; None where not compared (``memory_verify_note`` says why).
    memory_match: bool | None = None
    memory_pages_compared: int | None = None
    memory_pages_differing: int | None = None
    memory_first_differing: list[str] | None = None   # guest-physical, hex
    memory_differing_detail: list[dict[str, Any]] | None = None  # ``memory.verify``
    memory_verify_ms: float | None = None             # B waited this long for the comparison
    memory_verify_note: str | None = None
    #: The ``app`` workload: the orders Redis logged on the guest's disk
    #: (``integrity.app_order_fields``), read after the run from the disk the guest ended on.
    app_orders: int | None = None
    app_first_order: int | None = None
    app_last_order: int | None = None
    app_order_gaps: int | None = None
    #: Verify mode (``storage.verify``): both disks compared before B ran.
    disk_first_difference: int | None = None         # byte offset
    disk_verify_ms: float | None = None
    disk_verify_note: str | None = None              # why the disks were not compared
    #: ``e2fsck -fn`` on B's disk after the run (summary counters a mounted
    #: filesystem has out of date do not count: ``storage.disk.FSCK_BENIGN``).
    #: How long both copies ran at once, from each QEMU's STOP/RESUME events and its exit
    #: (``runstate.running_intervals``, ``overlap``): the safety rule says 0.
    both_running_ms: float | None = None
    disk_fsck_clean: bool | None = None
    disk_fsck_problems: list[str] | None = None


class Phase(_Model):
    name: str
    start_ms: float
    end_ms: float


class ResultRecord(_Model):
    status: Status
    error: str | None = None
    scenario: dict[str, Any]
    wan: WanInfo
    vm: VmInfo
    memory: MemoryResult
    storage: StorageResult
    network: NetworkResult
    integrity: IntegrityResult
    phases: list[Phase]
    total_ms: float
    #: The run state as it moved (``wanmig.runstate``): ``[{name, at_ms}]``.
    states: list[RunEvent] = []
    #: Where the outage went: ms from the source's STOP (as its event arrived) to each
    #: step of the switchover -- ``pre_switchover`` (QEMU said so), ``continue`` (sent),
    #: ``source_completed`` (or ``source_postcopy_active``), ``destination_loaded``,
    #: ``verified`` (verify mode), ``cont`` (sent to B), ``resume`` (B's RESUME) -- and
    #: to the start and end of the client's largest UDP echo gap (``client_gap_start``,
    #: ``client_gap_end``: B's first answer when the gap is the switchover's).  None
    #: where the source never stopped.
    switchover_timeline: dict[str, float] | None = None
    #: The migration's one bandwidth budget (``wanmig.budget``): its rate, every change
    #: and what each consumer (memory, storage) was granted when.
    budget: dict[str, Any] | None = None
    #: Every byte A's uplink sent to the WAN from ``prepare`` until the phases ended
    #: (memory, disk, the client's traffic that crossed): what the whole move cost the
    #: WAN (``testbed.sampler``); None where the phases never began.
    wan_bytes: int | None = None
    #: What the plots need (``report.html``), bounded in size, instants in ms on the
    #: phases' clock: ``udp_rtt`` and ``http``, the client's echoes and HTTP requests as
    #: ``probe.stats.downsample`` rows ``[ms, largest RTT or latency (None: all lost),
    #: count, lost]``; ``a_uplink_tx``, ``[ms, bytes A's uplink had sent]`` every 250 ms;
    #: ``memory_trace_at_ms``, when ``migrate`` was sent (``memory.trace``'s zero);
    #: ``marks``, {"A stopped", "B resumed"}; ``client_outage``, the largest gap [start, end];
    #: ``disk_jobs``, QEMU's block jobs' bytes still to copy as polled, ``{"A:<job>":
    #: [[ms, bytes], ...]}``.  None in records older than the plots.
    series: dict[str, Any] | None = None
    run_id: str | None = None
    started_at: str | None = None

    def write(self, path: Path) -> None:
        """Write the record by rename (``fileio.atomic_write``): a reader, or a crash
        half-way, never sees part of it; an earlier record at ``path`` stays whole
        until the new one replaces it.  Raises ``OSError``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (self.model_dump_json(indent=2) + "\n").encode())

    @classmethod
    def read(cls, path: Path) -> "ResultRecord":
        return cls.model_validate_json(path.read_text())
