"""The engine's decisions that need no QEMU: parts from the tables, integrity verdicts, interrupts."""

from __future__ import annotations

import asyncio

import pytest

from wanmig.config import parse_scenario
from wanmig.errors import ConfigError
from wanmig.memory.parts import Auto
from wanmig.network.l2extend import L2Extend
from wanmig.orchestrator import Orchestrator
from wanmig.record import IntegrityResult
from wanmig.runstate import Stage
from wanmig.storage.shared import SharedStorage


def _orch(**tables: object) -> Orchestrator:
    return Orchestrator(parse_scenario({"name": "t", **tables}))


def test_parts_come_from_the_scenario_through_the_tables() -> None:
    o = _orch(memory={"strategy": "auto"})
    assert isinstance(o.memory, Auto) and isinstance(o.storage, SharedStorage)
    assert isinstance(o.network, L2Extend)
    assert "may_resume_source=True" in repr(o)


def test_a_reordered_guest_log_fails_the_run() -> None:
    o = _orch()
    o.integrity = IntegrityResult(ok=False, guest_log_gaps=0, guest_log_bad_checksums=0,
                                  guest_log_malformed=1, guest_log_out_of_order=3,
                                  destination_disk_writes=120)
    status, error = o._judge_integrity("completed", None)
    assert status == "failed" and "3 out of order" in (error or "")
    assert o.state.stage is Stage.FAILED


class _WritesLater:
    """B's block counters as QMP reports them: no write for ``after`` reads, then some."""

    def __init__(self, after: int | None) -> None:
        self.after, self.reads = after, 0

    async def disk_writes(self) -> int:
        self.reads += 1
        return 0 if self.after is None or self.reads <= self.after else 7


async def test_a_guest_gets_time_for_its_first_write_at_b(monkeypatch) -> None:
    import wanmig.orchestrator as orch
    monkeypatch.setattr(orch, "WRITE_POLL_S", 0.01)
    monkeypatch.setattr(orch, "FIRST_WRITE_TIMEOUT_S", 0.2)
    o = _orch()
    late = _WritesLater(after=3)
    assert await o._writes_at(late) == 7 and late.reads == 4   # type: ignore[arg-type]
    assert o.notes["first_write_after_settle_ms"] >= 30
    # one that has written already is not held, and nothing is noted
    o2 = _orch()
    assert await o2._writes_at(_WritesLater(after=0)) == 7    # type: ignore[arg-type]
    assert "first_write_after_settle_ms" not in o2.notes
    # one that never writes: 0 after the timeout, which the verdict fails
    never = _WritesLater(after=None)
    assert await o2._writes_at(never) == 0 and never.reads > 5   # type: ignore[arg-type]


def test_a_completed_run_whose_guest_did_not_write_at_b_fails() -> None:
    o = _orch()
    o.integrity = IntegrityResult(ok=True, destination_disk_writes=0)
    status, error = o._judge_integrity("completed", None)
    assert status == "failed" and "no disk writes at B" in (error or "")
    o2 = _orch()
    o2.integrity = IntegrityResult(ok=True, destination_disk_writes=57)
    assert o2._judge_integrity("completed", None) == ("completed", None)
    # a rollback keeps its own error and status when the log is whole
    assert o2._judge_integrity("rolled_back", "x") == ("rolled_back", "x")


async def test_an_interrupt_cancels_only_while_the_source_may_resume() -> None:
    o = _orch()
    task = asyncio.create_task(asyncio.sleep(10))
    o._task = task
    o.interrupt("SIGTERM")
    await asyncio.sleep(0)
    assert task.cancelled() and o.interrupted == "SIGTERM"

    late = _orch()
    for stage in (Stage.SOURCE_RUNNING, Stage.DESTINATION_PREPARED, Stage.COPYING,
                  Stage.SOURCE_PAUSED, Stage.DESTINATION_RUNNING):
        late.state.enter(stage)
    task = asyncio.create_task(asyncio.sleep(0.05))
    late._task = task
    late.interrupt("SIGINT")
    await task   # not cancelled: the move finishes with B
    assert late.interrupted == "SIGINT"


@pytest.mark.parametrize("fault", [
    {"link_down_phase": "switchover"},               # no length
    {"link_down_s": 3},                              # no phase
])
def test_a_link_outage_needs_a_phase_and_a_length(fault: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="link_down"):
        parse_scenario({"fault": fault})


def test_a_link_outage_needs_an_emulated_link() -> None:
    with pytest.raises(ConfigError, match="emulated WAN"):
        parse_scenario({"wan": {"profile": "none"},
                        "fault": {"link_down_phase": "memory", "link_down_s": 5}})


def test_a_dirty_run_needs_the_guests_memory_check_at_b() -> None:
    dirty = {"vm": {"workload": "dirty", "dirty_mib": 16}}
    o = _orch(**dirty)
    o.integrity = IntegrityResult(ok=True, destination_disk_writes=57, guest_memory_sweeps=0)
    status, error = o._judge_integrity("completed", None)
    assert status == "failed" and "no whole sweep" in (error or "")
    o2 = _orch(**dirty)
    o2.integrity = IntegrityResult(ok=True, destination_disk_writes=57, guest_memory_sweeps=3,
                                   guest_memory_errors=1)
    assert "1 bad page found" in (o2._judge_integrity("completed", None)[1] or "")
    o3 = _orch(**dirty)
    o3.integrity = IntegrityResult(ok=True, destination_disk_writes=57, guest_memory_sweeps=3,
                                   guest_memory_errors=0)
    assert o3._judge_integrity("completed", None) == ("completed", None)
