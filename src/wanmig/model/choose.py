"""Choosing a strategy from the predictions: what the "auto" strategy does.

The rule, in order:

1. Among strategies predicted to converge with an outage within the target,
   take the shortest total.  Totals within ``targets.tie_margin`` of the
   shortest tie; on a tie the precopy family wins (after a postcopy
   switchover neither site holds a whole VM: if the destination dies, the VM
   is lost), then fewer bytes, then the shorter total.
2. If none meets the outage target, take the smallest predicted outage among
   those that converge (precopy family first on equal outages).

The reason is one sentence with the figures that decided it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .inputs import POSTCOPY_FAMILY, Calibration, Measurements, Strategy, Targets
from .predict import Prediction, predict_all

_RISK = "postcopy loses the VM if the destination fails after switchover"


class Decision(BaseModel):
    """The strategy chosen, why, and the predictions it was chosen from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chosen: Strategy
    reason: str
    predictions: list[Prediction]

    def prediction(self) -> Prediction:
        """The chosen strategy's prediction (for the result record)."""
        return next(p for p in self.predictions if p.strategy == self.chosen)


def _name(strategy: str) -> str:
    return "default precopy" if strategy == "precopy" else strategy


def _ms(x: float | None) -> str:
    return "?" if x is None else f"{x:.0f} ms"


def _s(x: float | None) -> str:
    return "?" if x is None else f"{x / 1e3:.1f} s"


def _postcopy_family(p: Prediction) -> bool:
    return p.strategy in POSTCOPY_FAMILY


def _other(p: Prediction, target_ms: float) -> str:
    """One clause on a strategy that was not chosen."""
    if not p.converges:
        return f"{_name(p.strategy)} does not converge ({p.limit})"
    if p.outage_ms is not None and p.outage_ms > target_ms:
        return f"{_name(p.strategy)} outage {_ms(p.outage_ms)} > target"
    return f"{_name(p.strategy)} total {_s(p.total_ms)}"


def choose(m: Measurements, targets: Targets = Targets(),
           cal: Calibration = Calibration()) -> Decision:
    """Pick the strategy predicted best for ``m`` (pure: no I/O)."""
    predictions = predict_all(m, targets, cal)
    target = targets.target_outage_ms
    converging = [p for p in predictions if p.converges and p.total_ms is not None]
    meeting = [p for p in converging if p.outage_ms is not None and p.outage_ms <= target]
    if meeting:
        shortest = min(p.total_ms for p in meeting)  # type: ignore[type-var]
        near = [p for p in meeting if p.total_ms <= shortest * (1 + targets.tie_margin)]
        chosen = min(near, key=lambda p: (_postcopy_family(p), p.bytes, p.total_ms))
        why = f"predicted outage {_ms(chosen.outage_ms)} ≤ target {target:.0f} ms and "
        why += (f"the shortest total {_s(chosen.total_ms)}" if chosen.total_ms == shortest
                else f"total {_s(chosen.total_ms)}, within {targets.tie_margin:.0%} of the "
                f"shortest ({_s(shortest)})")
        if not _postcopy_family(chosen) and any(map(_postcopy_family, near)):
            why += f" (precopy family preferred on the tie: {_RISK})"
    else:
        pool = converging or predictions
        chosen = min(pool, key=lambda p: (p.outage_ms if p.outage_ms is not None
                                          else float("inf"), _postcopy_family(p),
                                          p.total_ms or float("inf")))
        why = (f"no strategy meets the {target:.0f} ms outage target; it has the smallest "
               f"predicted outage, {_ms(chosen.outage_ms)} (total {_s(chosen.total_ms)})")
    if _postcopy_family(chosen):
        why += f", accepting that {_RISK}"
    others = "; ".join(_other(p, target) for p in predictions if p is not chosen)
    reason = f"{chosen.strategy}: {why}; {others}"
    return Decision(chosen=chosen.strategy, reason=reason, predictions=predictions)
