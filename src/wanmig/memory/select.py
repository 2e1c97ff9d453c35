"""From a scenario's memory settings and what was measured to a ``MigrationPlan``.

For ``precopy``, ``postcopy`` and ``hybrid`` this only derives the settings
from the link (rate and RTT measured just before) and the target outage.
``precopy-tuned`` and ``auto`` first survey the guest (``survey.survey_guest``:
dirty rate, non-zero bytes, compressibility): tuned starts auto-converge at the
throttle the dirty rate needs, and is refused where it broke guests here
(``model.tuned_refusal``: TCG, fast writers); ``auto`` asks ``wanmig.model`` to
predict every strategy and plans the one the model chose.  The returned ``decision`` goes
into the result record as it is: the survey, the measurements and the
prediction for the plan run; for ``auto`` also every prediction, the choice
and the reason.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import MemorySpec
from ..errors import MigrationError
from ..model import (Calibration, Measurements, Targets, choose, migration_settings, predict,
                     tuned_refusal)
from ..qemu.process import QemuVm
from .plan import MigrationPlan, TlsSettings, plan_from
from .survey import survey_guest

log = logging.getLogger("wanmig.memory.select")

AUTO_HORIZON_SHARE = 0.5
#: The strategies whose plan depends on what the guest does.
SURVEYED = ("auto", "precopy-tuned")


@dataclass(frozen=True)
class LinkFacts:
    """The inter-site link: its set rate, and what was measured before the migration."""

    rate_bit_s: float                     # the bottleneck's rate (set, or the veth's)
    rtt_ms: float                         # measured
    queue_ms: float = 0.0
    loss_pct: float = 0.0
    goodput_bit_s: float | None = None    # one TCP stream, measured


async def select_plan(spec: MemorySpec, src: QemuVm, *, ram_bytes: int, link: LinkFacts,
                      accel: str, workdir: Path, tls: TlsSettings | None,
                      preempt: bool) -> tuple[MigrationPlan, dict[str, Any] | None]:
    """The plan to run, and (for ``auto``) the decision record."""
    # auto plans to finish within half the timeout: under heavy throttling the
    # model's rounds were up to 1.5x optimistic here (dirty 50 MB/s: 99.5 s
    # predicted, not done in 150 s), and a plan that misses the timeout rolls back.
    horizon = spec.timeout_s * (AUTO_HORIZON_SHARE if spec.strategy == "auto" else 1.0)
    targets = Targets(target_outage_ms=spec.target_outage_ms, timeout_s=horizon,
                      postcopy_budget_s=spec.postcopy_budget_s)
    cal = Calibration()
    decision: dict[str, Any] | None = None
    known = dict(ram_bytes=ram_bytes, link_rate_bit_s=link.rate_bit_s, rtt_ms=link.rtt_ms,
                 queue_ms=link.queue_ms, loss_pct=link.loss_pct,
                 stream_goodput_bit_s=link.goodput_bit_s, cpus=os.cpu_count() or 1,
                 accel=accel, tls=tls is not None, postcopy_preempt=preempt)
    strategy = spec.strategy
    if strategy in SURVEYED:
        survey = await survey_guest(src, ram_bytes, workdir)
        m = Measurements(nonzero_bytes=survey.nonzero_bytes,
                         compress_ratio=survey.compress_ratio,
                         dirty_rate_bytes_s=survey.dirty_rate_bytes_s,
                         dirty_working_set_bytes=survey.working_set_bytes, **known)
        decision = {"survey": survey.to_dict(), "measurements": m.model_dump(),
                    "targets": targets.model_dump()}
        if strategy == "auto":
            chosen = choose(m, targets, cal)
            strategy = chosen.chosen
            decision.update(chosen.model_dump())
            log.info("auto chose %s: %s", strategy, chosen.reason)
        elif refusal := tuned_refusal(m):
            raise MigrationError(refusal)
    else:
        # Not surveyed: these settings need only the link and the target.
        m = Measurements(nonzero_bytes=ram_bytes, compress_ratio=1.0, dirty_rate_bytes_s=0.0,
                         **known)
    plan = plan_from(migration_settings(strategy, m, targets, cal), tls=tls)
    if decision is not None:
        decision["predicted"] = predict(strategy, m, targets, cal).model_dump()
    return plan, decision
