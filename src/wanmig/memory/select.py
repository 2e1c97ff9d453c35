"""From what was measured to the model's inputs and a ``MigrationPlan``.

The link as set and measured (``LinkFacts``, built once by ``link_facts``
from the record's ``wan`` block) and the guest (``survey.survey_guest``:
dirty rate, non-zero bytes, compressibility) become the model's
``Measurements``; ``wanmig.model`` turns those into each strategy's QEMU
settings, and ``plan_for`` into the plan a ``QemuMigration`` carries out.
The memory parts (``parts.py``) decide which of these steps they need:
only ``precopy-tuned`` and ``auto`` survey the guest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import MemorySpec, VmSpec
from ..model import Measurements, Targets, migration_settings
from ..model.inputs import Calibration
from ..qemu.process import QemuVm
from ..record import WanInfo
from .plan import MigrationPlan, TlsSettings, plan_from
from .survey import survey_guest

#: A plain veth between the sites has no set rate: what one TCP stream got on it here.
UNSHAPED_BIT_S = 10e9


@dataclass(frozen=True)
class LinkFacts:
    """The inter-site link as the model sees it: its set rate, and what was measured."""

    rate_bit_s: float                     # the bottleneck's rate (set, or the veth's)
    rtt_ms: float                         # measured (the set value if not measured)
    queue_ms: float = 0.0
    loss_pct: float = 0.0
    goodput_bit_s: float | None = None    # one TCP stream, measured


def link_facts(wan: WanInfo) -> LinkFacts:
    """The one place where the record's link (Mbit/s, as set and as measured) becomes
    the model's inputs (bit/s)."""
    link = wan.link
    rate_mbit = link.rate_mbit if link and link.rate_mbit else None
    rtt = wan.rtt_measured_ms or (link.rtt_ms if link else None) or 0.1
    return LinkFacts(rate_bit_s=rate_mbit * 1e6 if rate_mbit else UNSHAPED_BIT_S, rtt_ms=rtt,
                     queue_ms=link.queue_ms if link and link.rate_mbit else 0.0,
                     loss_pct=link.loss_pct if link else 0.0,
                     goodput_bit_s=wan.goodput_mbit * 1e6 if wan.goodput_mbit else None)


def targets_for(spec: MemorySpec, horizon_share: float = 1.0) -> Targets:
    return Targets(target_outage_ms=spec.target_outage_ms,
                   timeout_s=spec.timeout_s * horizon_share,
                   postcopy_budget_s=spec.postcopy_budget_s)


def known_facts(*, ram_bytes: int, link: LinkFacts, accel: str, tls: bool,
                preempt: bool) -> dict[str, Any]:
    """The measurements every strategy has without looking inside the guest."""
    return dict(ram_bytes=ram_bytes, link_rate_bit_s=link.rate_bit_s, rtt_ms=link.rtt_ms,
                queue_ms=link.queue_ms, loss_pct=link.loss_pct,
                stream_goodput_bit_s=link.goodput_bit_s, cpus=os.cpu_count() or 1,
                accel=accel, tls=tls, postcopy_preempt=preempt)


def unsurveyed(known: dict[str, Any]) -> Measurements:
    """Measurements for the strategies whose settings need only the link and the target."""
    return Measurements(nonzero_bytes=known["ram_bytes"], compress_ratio=1.0,
                        dirty_rate_bytes_s=0.0, **known)


async def surveyed(src: QemuVm, known: dict[str, Any],
                   workdir: Path) -> tuple[Measurements, dict[str, Any]]:
    """Measure the guest; the model's measurements and the survey for the record."""
    survey = await survey_guest(src, known["ram_bytes"], workdir)
    m = Measurements(nonzero_bytes=survey.nonzero_bytes, compress_ratio=survey.compress_ratio,
                     dirty_rate_bytes_s=survey.dirty_rate_bytes_s,
                     dirty_working_set_bytes=survey.working_set_bytes, **known)
    return m, survey.to_dict()


def nominal(vm: VmSpec, known: dict[str, Any]) -> tuple[Measurements, dict[str, Any]]:
    """``memory.ablate = ["survey"]``: the guest as the scenario describes it, unmeasured
    (all RAM non-zero and incompressible, the dirty workload's nominal rate and set)."""
    dirty = vm.workload == "dirty"
    m = Measurements(nonzero_bytes=known["ram_bytes"], compress_ratio=1.0,
                     dirty_rate_bytes_s=vm.dirty_rate_mbps * 1e6 if dirty else 0.0,
                     dirty_working_set_bytes=vm.dirty_mib * 2**20 if dirty else None, **known)
    return m, {"ablated": "nominal figures from the scenario, no survey"}


def plan_for(strategy: str, m: Measurements, targets: Targets,
             tls: TlsSettings | None) -> MigrationPlan:
    return plan_from(migration_settings(strategy, m, targets, Calibration()), tls=tls)
