"""The run state: where one migration stands, and the one rule that keeps a stale copy from running.

::

    source-running ─> destination-prepared ─> copying ─> source-paused ─┐
          │                   │                  │             │         │ (switchover: the last
          └──────── any failure, interrupt or timeout ─────────┘         │  bytes, B loaded, paused)
                              │                                          ▼
                              ▼                               destination-running ─> source-stopped
                         rolled-back                                  │                    │
                                                                      └──> failed / vm-lost <┘

The destination QEMU is started with ``-S``: when the migration stream ends
it stays paused (precopy and postcopy alike) until the engine sends it
``cont``.  So "the destination may have run" is a fact the engine decides,
not one it has to infer from QEMU's events: the state becomes
``destination-running`` *before* that ``cont`` is sent, and from then on the
destination may have run (and written to the VM's disk, answered clients).

**The rule** (``RunState.may_resume_source``): the source may be resumed
only while the destination has never run -- it was never sent ``cont`` and
is either not started, or fenced: killed and seen dead.  Every rollback,
signal handler and cleanup asks this one function.  Once the destination
may have run, the source is never resumed: the run finishes with B
authoritative, or ends ``failed`` (``vm-lost`` when B died too: neither
copy may run, and the record says what was lost).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


class Stage(enum.Enum):
    SOURCE_RUNNING = "source-running"
    DESTINATION_PREPARED = "destination-prepared"
    COPYING = "copying"
    SOURCE_PAUSED = "source-paused"
    DESTINATION_RUNNING = "destination-running"
    SOURCE_STOPPED = "source-stopped"
    # ends
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"
    VM_LOST = "vm-lost"


ENDS = frozenset({Stage.ROLLED_BACK, Stage.FAILED, Stage.VM_LOST})

#: The order a run moves forward in; an end may follow any of these.
_FORWARD = (Stage.SOURCE_RUNNING, Stage.DESTINATION_PREPARED, Stage.COPYING,
            Stage.SOURCE_PAUSED, Stage.DESTINATION_RUNNING, Stage.SOURCE_STOPPED)


class StateError(RuntimeError):
    """A transition the state machine does not allow: a bug in the engine, never input."""


@dataclass
class RunState:
    """The current stage, its history (ms since the run's clock started) and the facts
    the rule reads."""

    t0: float = field(default_factory=time.monotonic)
    stage: Stage | None = None
    history: list[tuple[Stage, float]] = field(default_factory=list)
    destination_started: bool = False    # a destination QEMU process exists (or existed)
    destination_fenced: bool = False     # it was killed and seen dead
    destination_may_have_run: bool = False  # it was (about to be) sent cont: never cleared

    def __repr__(self) -> str:
        return (f"RunState({self.stage.value if self.stage else None}, "
                f"may_resume_source={self.may_resume_source()})")

    # -- the rule -----------------------------------------------------------

    def may_resume_source(self) -> bool:
        """True only while the destination has never run and cannot run now."""
        if self.destination_may_have_run:
            return False
        return not self.destination_started or self.destination_fenced

    # -- transitions --------------------------------------------------------

    def enter(self, stage: Stage) -> None:
        """Move to ``stage``: forward only, ends only once."""
        if self.stage in ENDS:
            raise StateError(f"run already ended {self.stage.value}, cannot enter {stage.value}")
        if stage not in ENDS and self.stage is not None and \
                _FORWARD.index(stage) <= _FORWARD.index(self.stage):
            raise StateError(f"{self.stage.value} -> {stage.value} goes backwards")
        if stage is Stage.ROLLED_BACK and not self.may_resume_source():
            raise StateError("rollback after the destination may have run")
        if stage is Stage.DESTINATION_RUNNING:
            self.destination_may_have_run = True
        self.stage = stage
        self.history.append((stage, round((time.monotonic() - self.t0) * 1000.0, 3)))

    def destination_created(self) -> None:
        self.destination_started = True

    def destination_dead(self) -> None:
        """The destination was killed (or died) and its process was reaped."""
        self.destination_fenced = True

    @property
    def ended(self) -> bool:
        return self.stage in ENDS

    def to_list(self) -> list[dict[str, object]]:
        """The record's ``states``: ``[{name, at_ms}]``."""
        return [{"name": s.value, "at_ms": at} for s, at in self.history]


Interval = tuple[float, float]


def running_intervals(events: Sequence[tuple[str, float]], *, started: float,
                      ended: float, running_at_start: bool) -> list[Interval]:
    """When one QEMU's guest ran, from its STOP/RESUME events (``(name, time)``, in
    order): from ``started`` if it ran at once (no ``-S``), each RESUME to the next STOP,
    and the last one until ``ended`` (its exit, or the end of the run)."""
    out, since = [], (started if running_at_start else None)
    for name, at in events:
        if name == "RESUME" and since is None:
            since = at
        elif name == "STOP" and since is not None:
            out.append((since, at))
            since = None
    if since is not None and ended > since:
        out.append((since, ended))
    return out


def overlap(a: Sequence[Interval], b: Sequence[Interval]) -> float:
    """How long two sets of intervals overlap (the unit of their times)."""
    return sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in a for b0, b1 in b)
