"""Scenarios: TOML files validated by pydantic before anything is started.

A scenario names the VM, the memory strategy, the network mode, the probes
and (for tests of the failure paths) a fault to inject.  Unknown keys are
refused, so a typo is an error rather than a silently ignored setting.
Strategies the project names but has not implemented yet are refused with a
message saying so; they are never replaced by another strategy.

Validation is strict (pydantic's strict mode): a value must already have its
type, so ``tls = "no"`` or ``ram_mib = "512"`` is an error, not a guess (an
integer is still a valid float).  ``name`` becomes part of the result
record's file name (``results/<name>-<run id>.json``), so it must be a plain
file-name component.  Every problem -- a file that cannot be read, is not
UTF-8 or not TOML, a section that is not a table, a bad value -- is one
``ConfigError`` line, raised before anything is started.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from .errors import ConfigError
from .parts import MEMORY, NETWORK, STORAGE, PartError, PartTable
from .validation import config_error
from .wan.link import check_backend
from .wan.profiles import LinkProfile, resolve_profile

#: ``[wan] profile = "none"``: the sites are joined by a plain veth pair (no emulator).
NO_WAN = "none"


def _part_name(table: PartTable) -> Any:
    """A ``str`` field holding a name from ``table``: known and implemented, or refused."""
    def check(value: str) -> str:
        try:
            table.info(value)
        except PartError as exc:
            raise ValueError(str(exc)) from None
        return value
    return Annotated[str, AfterValidator(check)]


MemoryStrategy = _part_name(MEMORY)
StorageStrategy = _part_name(STORAGE)
StorageTransport = Literal["auto", "qemu", "wancopy"]
#: The strategies whose frozen images wancopy carries.
WANCOPY_STRATEGIES = ("postcopy", "hybrid")
NetworkMode = _part_name(NETWORK)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


#: ``Scenario.name``: a file-name component (the record is ``<name>-<run id>.json``).
NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


Workload = Literal["idle", "web", "dirty", "app"]
#: What ``memory.ablate`` may switch off (``wanmig.memory.plan.ablate``).
Ablation = Literal["auto-converge", "multifd", "zstd", "notsent-limit", "survey"]


#: The Debian tree takes ~200 MiB; the rest is room for the guest to write.
DEBIAN_BASE_MIN_MIB = 512


class VmSpec(_Strict):
    """The guest.  ``workload``: ``idle``; ``web`` (the client sends HTTP
    requests at ``web_rps``); ``dirty`` (the guest rewrites a ``dirty_mib``
    working set with incompressible data at ``dirty_rate_mbps`` MB/s); ``app``
    (the client places orders at ``web_rps`` through the guest's nginx, an app
    tier and Redis, which keeps them on the disk: needs ``root = "debian"``).
    ``root``: ``initramfs`` (the busybox guest, the fast default) or
    ``debian`` (the guest switches root to its disk, the ``debian`` base).  With
    any workload, ``disk_write_mbps`` > 0 makes the guest rewrite a
    ``disk_write_mib`` file on its disk at that rate, in 64 KiB O_DSYNC
    writes whose latency it reports (``storage.diskio``)."""

    ram_mib: int = Field(256, ge=64, le=16384)
    disk_mib: int = Field(64, ge=16, le=65536)
    workload: Workload = "idle"
    dirty_mib: int = Field(64, ge=1, le=8192)
    dirty_rate_mbps: float = Field(20.0, ge=0, le=10000)
    web_rps: float = Field(20.0, gt=0, le=1000)
    disk_write_mbps: float = Field(0.0, ge=0, le=1000)
    disk_write_mib: int = Field(16, ge=1, le=8192)
    #: What the disk's base image holds (``storage.base``): ``empty`` or ``debian``.
    base: Literal["empty", "debian"] = "empty"
    root: Literal["initramfs", "debian"] = "initramfs"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    boot_timeout_s: float = Field(90.0, gt=0, le=600)

    @model_validator(mode="after")
    def _working_set_fits(self) -> "VmSpec":
        if self.workload == "dirty" and self.dirty_mib > self.ram_mib // 2:
            raise ValueError(f"dirty_mib {self.dirty_mib} must be at most half of "
                             f"ram_mib {self.ram_mib}")
        if self.root == "debian" and self.base != "debian":
            raise ValueError('root = "debian" boots from the disk: it needs base = "debian"')
        if self.workload == "app" and self.root != "debian":
            raise ValueError('the app workload runs on the Debian root: it needs '
                             'root = "debian"')
        if self.base == "debian" and self.disk_mib < DEBIAN_BASE_MIN_MIB:
            raise ValueError(f"the debian base needs disk_mib >= {DEBIAN_BASE_MIN_MIB}")
        if self.disk_write_mbps and self.disk_write_mib > self.disk_mib // 2:
            raise ValueError(f"disk_write_mib {self.disk_write_mib} must be at most half of "
                             f"disk_mib {self.disk_mib}")
        return self


class MemorySpec(_Strict):
    """How memory moves.  ``target_outage_ms`` is what the client may see: it
    sets precopy-tuned's downtime-limit and is auto's criterion.  ``tls``
    encrypts and mutually authenticates the migration stream (``--insecure``
    turns it off to measure its cost).  ``verify`` compares both guests' RAM
    page by page while the destination is still paused (``memory.verify``):
    for tests and benchmarks, it lengthens the outage by the comparison.
    ``ablate`` switches parts of a plan off, for experiments."""

    strategy: MemoryStrategy = "precopy"
    timeout_s: float = Field(600.0, gt=0, le=7200)
    target_outage_ms: float = Field(300.0, ge=10, le=60000)
    postcopy_budget_s: float = Field(30.0, gt=0, le=3600)
    tls: bool = True
    verify: bool = False
    #: For experiments (bisecting a fault, pricing a feature): parts of the chosen
    #: plan switched off.  Recorded in ``memory.plan.ablated``.
    ablate: list[Ablation] = []
    #: For experiments: QEMU migration parameters set over the plan's own
    #: (``multifd-channels = 2``, say); ``multifd-*`` ones go to both sides.
    parameters: dict[str, int | str] = {}


class StorageSpec(_Strict):
    """How the VM's disk gets to the destination (``wanmig.parts.STORAGE``).

    Every strategy but ``shared`` gives each site its own disk and copies it
    over the WAN; its channels use TLS whenever ``memory.tls`` is on
    (``--insecure`` turns both off).  ``timeout_s`` bounds the bulk copy.
    ``verify`` compares both disks block by block once the source is stopped,
    before the destination runs (for tests and benchmarks: it lengthens the
    outage by the comparison).  ``synchronous_writes`` is libvirt's
    ``--copy-storage-synchronous-writes`` for ``mirror``: once the disk is
    copied, each guest write completes only when it is at B too (QEMU's
    ``copy-mode: write-blocking``), so the copy converges however often the
    guest writes -- at the cost of one WAN round trip per write.  ``auto``
    measures the guest's disk dirty rate for ``survey_s`` before it chooses
    (``wanmig.model.storage``); ``dest_running_within_s`` tells it that B must
    run that soon after the copy starts (an evacuation), which rules out the
    strategies predicted to take longer.  ``fetch`` (postcopy, hybrid): once B
    runs, A's image is fetched whole with many requests in flight (``nbdcopy``)
    and streamed locally, instead of ``block-stream`` over NBD one chunk per
    round trip: B stops depending on A sooner, but the whole image crosses,
    also what B's guest rewrote meanwhile (bench storage run 7).

    ``transport``: what carries a whole frozen image across -- ``hybrid``'s
    bulk and the fetch of ``postcopy``/``hybrid`` (``wancopy`` implies the
    fetch).  ``auto`` (the default): wancopy for ``postcopy`` and ``hybrid``
    (also where ``auto`` chose them), QEMU's NBD for the rest.  ``qemu`` is
    QEMU's NBD (``blockdev-backup``, ``nbdcopy``);
    ``wancopy`` is wanmig's own (``storage.wancopy``): zero blocks as ranges,
    blocks B's base holds by reference, the rest zstd at ``compress_level``
    (0: none), over ``streams`` TLS connections (0: as many as the link's
    bandwidth-delay product and loss call for).  ``mirror`` and ``precopy``
    copy a disk the guest keeps writing and always use QEMU's NBD."""

    strategy: StorageStrategy = "shared"
    timeout_s: float = Field(1800.0, gt=0, le=86400)
    verify: bool = False
    synchronous_writes: bool = False
    survey_s: float = Field(2.0, gt=0, le=60)
    dest_running_within_s: float | None = Field(None, gt=0)
    fetch: bool = False
    transport: StorageTransport = "auto"
    compress_level: int = Field(1, ge=0, le=19)
    streams: int = Field(0, ge=0, le=16)

    @model_validator(mode="after")
    def _transport_fits(self) -> StorageSpec:
        if self.transport == "wancopy" and self.strategy not in WANCOPY_STRATEGIES:
            raise ValueError(
                f"storage.transport = \"wancopy\" is not implemented for {self.strategy}: "
                "wancopy copies frozen images (hybrid's bulk, the postcopy/hybrid fetch); "
                "mirror and precopy copy a disk the guest keeps writing over QEMU's NBD; "
                "with transport \"auto\" (the default) auto's choice of postcopy or "
                "hybrid runs on wancopy")
        return self

    def wancopy_for(self, strategy: str) -> bool:
        """Whether wancopy carries ``strategy``'s frozen images (``transport`` resolved):
        asked for, or by default for postcopy and hybrid, also as ``auto``'s choice."""
        return strategy in WANCOPY_STRATEGIES and self.transport in ("auto", "wancopy")


class BudgetSpec(_Strict):
    """One bandwidth budget for memory and disk together (``wanmig.budget``).

    ``rate_mbit``: what the whole migration may take of the link; by default
    the link's rate (nothing is capped unless memory and disk move at once).
    While both move, the disk gets ``storage_share`` of it and memory the rest.
    ``wanmig budget RUN MBIT`` changes it while the run goes on."""

    rate_mbit: float | None = Field(None, gt=0, le=100_000)
    storage_share: float = Field(0.25, gt=0, lt=1)


class NetworkSpec(_Strict):
    """How the VM's network identity moves (``wanmig.parts.NETWORK``).  ``dns_ttl_s``:
    the TTL ``dns-tunnel`` lowers the VM's record to before the move (its zone's normal
    TTL is ``network.dns.NORMAL_TTL_S``)."""

    mode: NetworkMode = "l2-extend"
    dns_ttl_s: int = Field(5, ge=1, le=3600)
    #: The modes' tunnels across the WAN (the stretched segment, the home agent's) are
    #: OpenVPN with mutual TLS; ``false``: plain VXLAN, to measure what encryption costs.
    encrypt: bool = True


class WanSpec(_Strict):
    """The link between the sites: a named profile, optionally with values overridden.

    Resolved once, when the scenario is validated: ``link`` is the
    ``LinkProfile`` the testbed's emulator runs and the record embeds (None
    for ``profile = "none"``, a plain veth), ``client_link`` the client path's.
    """

    profile: str = "continental"
    rtt_ms: float | None = None
    jitter_ms: float | None = None
    loss_pct: float | None = None
    rate_mbit: float | None = None
    queue_ms: float | None = None
    backend: Annotated[str, AfterValidator(check_backend)] = "auto"
    #: The client's site's links to A and to B (one profile for both; "none": plain
    #: veths): a nearby client by default, so every path it takes crosses a WAN.
    client_profile: str | None = "metro"
    _link: LinkProfile | None = PrivateAttr(None)
    _client_link: LinkProfile | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _resolve(self) -> "WanSpec":
        overrides = {k: v for k, v in self.model_dump().items()
                     if k in ("rtt_ms", "jitter_ms", "loss_pct", "rate_mbit", "queue_ms")
                     and v is not None}
        if self.profile == NO_WAN:
            if overrides:
                raise ConfigError("values given but profile is 'none'", field="wan.profile")
        else:
            self._link = resolve_profile({"profile": self.profile, **overrides})
        if self.client_profile not in (None, NO_WAN):
            try:
                self._client_link = resolve_profile(self.client_profile)
            except ConfigError as exc:
                raise ConfigError(str(exc).split(": ", 1)[-1],
                                  field="wan.client_profile") from None
        return self

    @property
    def link(self) -> LinkProfile | None:
        """The inter-site profile, or None for a plain veth (``profile = "none"``)."""
        return self._link

    @property
    def client_link(self) -> LinkProfile | None:
        """The client path's profile, or None for a plain veth."""
        return self._client_link


#: The UDP echo's interval when the scenario does not set one, by accelerator.  Under
#: TCG an idle guest at rest, nothing migrating, used 91 % of its vCPU at 1 ms and
#: answered 96 % at a p50 RTT of 27 ms, 81 % at 2 ms (p50 7 ms), 65 % at 5 ms (100 %
#: answered, p50 1.8 ms); at 1 ms the guest's queue, not the network, set the RTT, and
#: any other load on the host tipped it over (38-87 % answered beside one busy
#: process).  A probe that saturates what it measures measures itself, so TCG runs
#: probe every 5 ms (the outage's resolution) and KVM every 1 ms.
DEFAULT_PROBE_INTERVAL_MS = {"kvm": 1.0, "tcg": 5.0}


class ProbeSpec(_Strict):
    #: None: by accelerator (``DEFAULT_PROBE_INTERVAL_MS``); the record keeps the one used.
    interval_ms: float | None = Field(None, gt=0.1, le=1000)
    warmup_s: float = Field(1.0, ge=0, le=60)
    settle_s: float = Field(2.0, ge=0, le=60)

    def interval_for(self, accel: str) -> float:
        """The UDP echo interval a run with ``accel`` (resolved: kvm or tcg) uses."""
        return self.interval_ms if self.interval_ms is not None else DEFAULT_PROBE_INTERVAL_MS[accel]


class FaultSpec(_Strict):
    """Faults injected on purpose, to exercise the rollback paths."""

    #: Where the destination QEMU is killed (``wanmig.faults``): ``after-resume``
    #: and ``postcopy`` are after it ran, so the VM is lost and the source is never
    #: resumed (a stale copy); the others are before, so the run rolls back.
    kill_destination: Literal["none", "memory", "pre-switchover", "after-resume",
                              "postcopy"] = "none"
    #: ``foreign-ca``: the destination presents a certificate another CA signed.
    destination_cert: Literal["valid", "foreign-ca"] = "valid"
    #: The WAN link drops everything for ``link_down_s`` seconds, starting in this phase.
    link_down_phase: Literal["none", "storage", "memory", "switchover", "postcopy"] = "none"
    link_down_s: float = Field(0.0, ge=0, le=600)
    #: Where the source QEMU is killed: before ``after-resume`` it held the only complete
    #: copy (B never had the whole guest), so the VM is lost and the run says so; at
    #: ``after-resume`` B has everything and the run completes; under ``postcopy`` B
    #: still borrows pages from A, so the VM is lost.
    kill_source: Literal["none", "memory", "pre-switchover", "switchover", "after-resume",
                         "postcopy"] = "none"
    #: Where the controller (this process) is killed with SIGKILL: a crash of wanmig
    #: itself; both QEMUs live on and ``wanmig recover`` ends the run by the rule.
    kill_controller: Literal["none", "storage", "memory", "pre-switchover", "switchover",
                             "after-resume", "postcopy"] = "none"
    #: A QEMU that stops answering (SIGSTOP) in ``hang_phase`` for ``hang_s`` seconds,
    #: then goes on (SIGCONT): a hung host, seen only as silence.
    hang: Literal["none", "source", "destination"] = "none"
    hang_phase: Literal["none", "memory", "pre-switchover", "switchover", "after-resume",
                        "postcopy"] = "none"
    hang_s: float = Field(0.0, ge=0, le=600)
    #: ``destination``: one page of B's RAM is changed just before verify mode
    #: compares the copies (needs ``memory.verify``): the check must catch it.
    corrupt_page: Literal["none", "destination"] = "none"

    @model_validator(mode="after")
    def _outage_has_a_length(self) -> "FaultSpec":
        if (self.link_down_phase == "none") != (self.link_down_s == 0):
            raise ValueError("link_down_phase and a link_down_s above 0 go together")
        if len({self.hang == "none", self.hang_phase == "none", self.hang_s == 0}) != 1:
            raise ValueError("hang, hang_phase and a hang_s above 0 go together")
        return self


class Scenario(_Strict):
    name: str = "demo"
    vm: VmSpec = VmSpec()
    memory: MemorySpec = MemorySpec()
    storage: StorageSpec = StorageSpec()
    budget: BudgetSpec = BudgetSpec()
    network: NetworkSpec = NetworkSpec()
    wan: WanSpec = WanSpec()
    probe: ProbeSpec = ProbeSpec()
    fault: FaultSpec = FaultSpec()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if len(v) > NAME_MAX:  # not quoted back: it is long
            raise ConfigError(f"{len(v)} characters long, at most {NAME_MAX}", field="name")
        if not _NAME.fullmatch(v):
            raise ValueError("must be letters, digits, '.', '_' and '-', not starting with '.'")
        return v

    @model_validator(mode="after")
    def _faults_fit(self) -> "Scenario":
        if self.fault.link_down_phase != "none" and self.wan.link is None:
            raise ConfigError("a link outage needs an emulated WAN (wan.profile is 'none')",
                              field="fault.link_down_phase")
        for fault, phase in (("link_down_phase", self.fault.link_down_phase),
                             ("kill_controller", self.fault.kill_controller)):
            if phase == "storage" and self.storage.strategy == "shared":
                raise ConfigError(f"{fault} = 'storage' needs a storage strategy that copies "
                                  "(storage.strategy is 'shared')", field=f"fault.{fault}")
        for fault, phase in (("link_down_phase", self.fault.link_down_phase),
                             ("kill_destination", self.fault.kill_destination),
                             ("kill_source", self.fault.kill_source),
                             ("kill_controller", self.fault.kill_controller),
                             ("hang_phase", self.fault.hang_phase)):
            if phase == "postcopy" and self.memory.strategy in ("precopy", "precopy-tuned"):
                raise ConfigError(f"{fault} = 'postcopy' needs a strategy that may switch to "
                                  "postcopy (postcopy, hybrid or auto)", field=f"fault.{fault}")
        if self.fault.corrupt_page != "none" and not self.memory.verify:
            raise ConfigError("corrupting a page is only seen with memory.verify = true",
                              field="fault.corrupt_page")
        return self


def parse_scenario(data: dict[str, Any]) -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc) from None


#: The scenario's tables (``[vm]``, ``[memory]``, ...): the fields that are models.
TABLES = tuple(name for name, f in Scenario.model_fields.items()
               if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel))


def load_scenario(path: Path, *, overrides: dict[str, dict[str, Any]] | None = None) -> Scenario:
    """Read and validate a scenario file; ConfigError names the bad field.

    ``overrides`` (from the CLI: ``--wan``, ``--strategy``, ...) replace the
    file's values, table by table: ``{"wan": {"profile": "lan"}}``.
    """
    data = _read_scenario_file(path)
    for table in TABLES:  # ``vm = 3``: no table to put ``--workload`` into
        if not isinstance(data.get(table, {}), dict):
            raise ConfigError(f"must be a table ([{table}]), got {data[table]!r}", field=table)
    for table, values in (overrides or {}).items():
        data.setdefault(table, {}).update(values)
    return parse_scenario(data)


def _read_scenario_file(path: Path) -> dict[str, Any]:
    """``path`` parsed as TOML (as JSON where it ends in ``.json``); every way it can fail
    is one ConfigError line."""
    try:
        if not path.is_file():  # a directory, or a FIFO that would block the read
            raise ConfigError(f"scenario file not found: {path}" if not path.exists()
                              else f"scenario {path} is not a regular file")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
        if path.suffix == ".json":   # what a tool wrote (``wanmig bench faults``)
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: a scenario is a JSON object")
            return data
        return tomllib.loads(text)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (line {line})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
