"""What a memory strategy asks of QEMU, as data: the ``MigrationPlan``.

The numbers and capabilities of each strategy come from one place,
``wanmig.model.migration_settings`` (so a prediction and a run cannot disagree
on a setting); ``plan_from`` adds what every run needs on top and splits it
into the source's and the destination's share:

* ``events`` and ``pause-before-switchover`` on the source (the orchestrator's
  rollback point);
* the destination's mirror of what must match: postcopy and multifd
  capabilities, multifd's channels and compression;
* unless insecure, the TLS credentials on both sides, the name the source
  checks the destination's certificate against, and the destination's
  ``tls-authz``: the one source identity it lets in (``wanmig.memory.tls``).

==============  ==========================================================  ===============
strategy        source capabilities / parameters (model/settings.py)        postcopy
==============  ==========================================================  ===============
precopy         QEMU's defaults (the baseline)                              never
precopy-tuned   auto-converge, downtime-limit from the target outage;       never
                multifd + zstd (one channel under TCG)
postcopy        postcopy-ram (+ postcopy-preempt where QEMU has it)         at once
hybrid          postcopy-ram (+ preempt), max-bandwidth, downtime-limit     when precopy
                                                                            stalls or its
                                                                            budget is spent
==============  ==========================================================  ===============

``auto`` is not a plan: the orchestrator measures, asks ``wanmig.model`` which
of these to run, and plans that one.  Limits behind the table (QEMU 10.0):
postcopy cannot be combined with multifd; multifd pages bypass xbzrle;
``dirty-limit`` needs KVM's dirty ring, so auto-converge is what slows a busy
guest; under TCG one multifd channel (``model.link.TCG_MULTIFD_CHANNELS``:
two came out whole but no faster here).  ``ablate`` and ``override`` change a
plan for experiments (``memory.ablate``, ``memory.parameters``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..model import MigrationSettings
from ..model.settings import NEAR_CONVERGENCE, STALL_RATIO, PostcopyTrigger

#: Capabilities every plan sets on the source (everything else is set off).
BASE_CAPABILITIES = frozenset({"events", "pause-before-switchover"})
#: The destination only needs events, plus what must match the source.
BASE_DEST_CAPABILITIES = frozenset({"events"})
MIRRORED_CAPABILITIES = frozenset({"multifd", "postcopy-ram", "postcopy-preempt"})
TLS_OBJECT_ID = "wanmig-tls"
TLS_AUTHZ_ID = "wanmig-tls-authz"


@dataclass(frozen=True)
class TlsSettings:
    """Names QEMU needs once the tls-creds-x509 objects exist on both sides.

    ``authz_id`` is the destination's ``authz-simple`` object (made by
    ``tls.add_tls_creds(client_identity=...)``): without it the destination
    would take any client certificate the deployment CA ever signed.
    """

    hostname: str  # what the source checks the destination's certificate against
    object_id: str = TLS_OBJECT_ID
    authz_id: str = TLS_AUTHZ_ID


@dataclass(frozen=True)
class MigrationPlan:
    strategy: str
    capabilities: frozenset[str]
    dest_capabilities: frozenset[str]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    dest_parameters: Mapping[str, Any] = field(default_factory=dict)
    postcopy: PostcopyTrigger = "never"
    #: hybrid: switch to postcopy at the latest after this many seconds of precopy
    postcopy_budget_s: float | None = None
    tls: TlsSettings | None = None
    ablated: tuple[str, ...] = ()   # what ``ablate`` switched off
    overridden: tuple[str, ...] = ()  # parameters ``memory.parameters`` set

    def to_dict(self) -> dict[str, Any]:
        """The plan as it goes into the result record."""
        return {"strategy": self.strategy, "capabilities": sorted(self.capabilities),
                "parameters": dict(self.parameters), "postcopy": self.postcopy,
                "postcopy_budget_s": self.postcopy_budget_s, "tls": self.tls is not None,
                "ablated": list(self.ablated), "overridden": list(self.overridden)}


def plan_from(settings: MigrationSettings, *, tls: TlsSettings | None = None) -> MigrationPlan:
    """The plan that carries out ``settings`` (see the module docstring)."""
    caps = BASE_CAPABILITIES | set(settings.capabilities)
    params: dict[str, Any] = dict(settings.parameters)
    dest_params = {k: v for k, v in params.items() if k.startswith("multifd-")}
    if tls is not None:
        params.update({"tls-creds": tls.object_id, "tls-hostname": tls.hostname})
        dest_params.update({"tls-creds": tls.object_id, "tls-authz": tls.authz_id})
    return MigrationPlan(
        strategy=settings.strategy, capabilities=frozenset(caps),
        dest_capabilities=BASE_DEST_CAPABILITIES | (caps & MIRRORED_CAPABILITIES),
        parameters=params, dest_parameters=dest_params, postcopy=settings.postcopy,
        postcopy_budget_s=settings.postcopy_budget_s, tls=tls)


#: What each ablation removes from a plan: capabilities, and parameters by prefix.
_ABLATED: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "auto-converge": (frozenset({"auto-converge"}),
                      ("cpu-throttle-", "max-cpu-throttle", "throttle-trigger-threshold")),
    "multifd": (frozenset({"multifd"}), ("multifd-",)),
    "zstd": (frozenset(), ("multifd-compression", "multifd-zstd-level")),
}


def override(plan: MigrationPlan, parameters: Mapping[str, Any]) -> MigrationPlan:
    """``plan`` with QEMU parameters set over its own (``memory.parameters``, for
    experiments); recorded as ``overridden`` in the plan."""
    if not parameters:
        return plan
    dest = {k: v for k, v in parameters.items() if k.startswith("multifd-")}
    return replace(plan, parameters={**plan.parameters, **parameters},
                   dest_parameters={**plan.dest_parameters, **dest},
                   overridden=tuple(sorted(parameters)))


def ablate(plan: MigrationPlan, features: Iterable[str]) -> MigrationPlan:
    """``plan`` with ``features`` switched off (``memory.ablate``, for experiments).

    Only what the plan uses is removed and named in ``ablated``.  ``notsent-limit``
    (every plan but default precopy caps site A's unsent backlog) is only named:
    the memory part reads it from ``ablated``; ``survey`` is the memory part's.
    """
    caps, dest_caps = set(plan.capabilities), set(plan.dest_capabilities)
    params, dest_params = dict(plan.parameters), dict(plan.dest_parameters)
    done = []
    for feature in features:
        if feature == "notsent-limit" and plan.strategy != "precopy":
            done.append(feature)
        if feature not in _ABLATED:
            continue
        off_caps, prefixes = _ABLATED[feature]
        used = caps & off_caps or any(k.startswith(prefixes) for k in params)
        caps -= off_caps
        dest_caps -= off_caps
        for table in (params, dest_params):
            for key in [k for k in table if k.startswith(prefixes)]:
                del table[key]
        if used:
            done.append(feature)
    return replace(plan, capabilities=frozenset(caps), dest_capabilities=frozenset(dest_caps),
                   parameters=params, dest_parameters=dest_params,
                   ablated=plan.ablated + tuple(done))


def near_convergence_bytes(rate_bytes_s: float, downtime_limit_ms: float) -> float:
    """What hybrid's stall rule ignores: a remainder QEMU is about to switch over with."""
    return NEAR_CONVERGENCE * rate_bytes_s * downtime_limit_ms / 1000


@dataclass
class StallDetector:
    """Hybrid's trigger: precopy has stopped making progress.

    Fed the bytes still to send at each new dirty-sync (the start of a round).
    After the first full pass (two syncs), a round that leaves more than
    ``ratio`` of the previous round's remainder counts as a stall; ``rounds``
    stalls in a row (one by default) mean precopy will not converge on its own soon.
    A remainder within ``near_bytes`` (``near_convergence_bytes``: twice what QEMU
    switches over at) is no stall: there precopy hovers at the guest's hot set and
    converges when a round dips under QEMU's threshold.  Without it, hybrid runs on
    idle and web guests switched to postcopy at 1.4-2.0 MiB left (6 of 6, bench
    run 12, QEMU 10.0) and paid remote faults that precopy would have avoided.
    """

    ratio: float = STALL_RATIO  # the model predicts hybrid with the same ratio
    rounds: int = 1
    near_bytes: float = 0.0
    _last_sync: int = 0
    _last_remaining: int | None = None
    _stalls: int = 0

    def feed(self, sync_count: int, remaining: int) -> bool:
        if sync_count <= self._last_sync:
            return self._stalls >= self.rounds
        self._last_sync = sync_count
        if sync_count >= 3 and self._last_remaining is not None:
            if remaining > max(self.ratio * self._last_remaining, self.near_bytes):
                self._stalls += 1
            else:
                self._stalls = 0
        if sync_count >= 2:
            self._last_remaining = remaining
        return self._stalls >= self.rounds
