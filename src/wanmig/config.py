"""Scenarios: TOML files validated by pydantic before anything is started.

A scenario names the VM, the memory strategy, the network mode, the probes
and (for tests of the failure paths) a fault to inject.  Unknown keys are
refused, so a typo is an error rather than a silently ignored setting.
Strategies the project names but has not implemented yet are refused with a
message saying so; they are never replaced by another strategy.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .validation import config_error
from .wan.profiles import LinkProfile, resolve_profile

#: ``[wan] profile = "none"``: the sites are joined by a plain veth pair (no emulator).
NO_WAN = "none"

#: Memory strategies wanmig knows by name, and whether this build implements them.
MEMORY_STRATEGIES: dict[str, bool] = {
    "precopy": True,
    "precopy-tuned": True,
    "postcopy": True,
    "hybrid": True,
    "auto": True,
}
NETWORK_MODES: dict[str, bool] = {
    "l2-extend": True,
    "dns-tunnel": False,
    "mobile-ip": False,
    "route": False,
}


def _known_and_implemented(value: str, table: dict[str, bool], what: str) -> str:
    if value not in table:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(table)}")
    if not table[value]:
        raise ValueError(f"{what} {value!r} is not implemented yet in this version")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Workload = Literal["idle", "web", "dirty"]


class VmSpec(_Strict):
    """The guest.  ``workload``: ``idle``; ``web`` (the client sends HTTP
    requests at ``web_rps``); ``dirty`` (the guest rewrites a ``dirty_mib``
    working set with incompressible data at ``dirty_rate_mbps`` MB/s)."""

    ram_mib: int = Field(256, ge=64, le=16384)
    disk_mib: int = Field(64, ge=16, le=65536)
    workload: Workload = "idle"
    dirty_mib: int = Field(64, ge=1, le=8192)
    dirty_rate_mbps: float = Field(20.0, ge=0, le=10000)
    web_rps: float = Field(20.0, gt=0, le=1000)
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    boot_timeout_s: float = Field(90.0, gt=0, le=600)

    @model_validator(mode="after")
    def _working_set_fits(self) -> "VmSpec":
        if self.workload == "dirty" and self.dirty_mib > self.ram_mib // 2:
            raise ValueError(f"dirty_mib {self.dirty_mib} must be at most half of "
                             f"ram_mib {self.ram_mib}")
        return self


class MemorySpec(_Strict):
    """How memory moves.  ``target_outage_ms`` is what the client may see: it
    sets precopy-tuned's downtime-limit and is auto's criterion.  ``tls``
    encrypts and mutually authenticates the migration stream (``--insecure``
    turns it off to measure its cost)."""

    strategy: str = "precopy"
    timeout_s: float = Field(600.0, gt=0, le=7200)
    target_outage_ms: float = Field(300.0, ge=10, le=60000)
    postcopy_budget_s: float = Field(30.0, gt=0, le=3600)
    tls: bool = True

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return _known_and_implemented(v, MEMORY_STRATEGIES, "memory strategy")


class NetworkSpec(_Strict):
    mode: str = "l2-extend"

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        return _known_and_implemented(v, NETWORK_MODES, "network mode")


class WanSpec(_Strict):
    """The link between the sites: a named profile, optionally with values overridden."""

    profile: str = "continental"
    rtt_ms: float | None = None
    jitter_ms: float | None = None
    loss_pct: float | None = None
    rate_mbit: float | None = None
    queue_ms: float | None = None
    backend: Literal["auto", "netem", "forwarder"] = "auto"
    client_profile: str | None = None  # an emulated link on the client's path too

    @model_validator(mode="after")
    def _resolvable(self) -> "WanSpec":
        self.link_profile()
        self.client_link_profile()
        return self

    def _overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items()
                if k in ("rtt_ms", "jitter_ms", "loss_pct", "rate_mbit", "queue_ms")
                and v is not None}

    def link_profile(self) -> LinkProfile | None:
        """The inter-site profile, or None for a plain veth (``profile = "none"``)."""
        if self.profile == NO_WAN:
            if self._overrides():
                raise ConfigError("values given but profile is 'none'", field="wan.profile")
            return None
        return resolve_profile({"profile": self.profile, **self._overrides()})

    def client_link_profile(self) -> LinkProfile | None:
        """The client path's profile (a name only), or None for a plain veth."""
        if self.client_profile in (None, NO_WAN):
            return None
        try:
            return resolve_profile(self.client_profile)
        except ConfigError as exc:
            raise ConfigError(str(exc).split(": ", 1)[-1], field="wan.client_profile") from None


class ProbeSpec(_Strict):
    interval_ms: float = Field(1.0, gt=0.1, le=1000)
    warmup_s: float = Field(1.0, ge=0, le=60)
    settle_s: float = Field(2.0, ge=0, le=60)


class FaultSpec(_Strict):
    """Faults injected on purpose, to exercise the rollback paths."""

    #: ``postcopy``: after the destination runs in postcopy, before every page
    #: arrived: the case postcopy cannot survive (the record reports the VM lost).
    kill_destination: Literal["none", "memory", "pre-switchover", "postcopy"] = "none"
    #: ``foreign-ca``: the destination presents a certificate another CA signed.
    destination_cert: Literal["valid", "foreign-ca"] = "valid"


class Scenario(_Strict):
    name: str = "demo"
    vm: VmSpec = VmSpec()
    memory: MemorySpec = MemorySpec()
    network: NetworkSpec = NetworkSpec()
    wan: WanSpec = WanSpec()
    probe: ProbeSpec = ProbeSpec()
    fault: FaultSpec = FaultSpec()


def parse_scenario(data: dict[str, Any]) -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc) from None


def load_scenario(path: Path, *, overrides: dict[str, dict[str, Any]] | None = None) -> Scenario:
    """Read and validate a scenario file; ConfigError names the bad field.

    ``overrides`` (from the CLI: ``--wan``, ``--strategy``, ...) replace the
    file's values, table by table: ``{"wan": {"profile": "lan"}}``.
    """
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"scenario file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for table, values in (overrides or {}).items():
        data.setdefault(table, {}).update(values)
    return parse_scenario(data)
