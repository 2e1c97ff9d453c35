"""The run state and its one rule: the source is resumed only while the destination never ran."""

from __future__ import annotations

import pytest

from wanmig.model.switchover import SWITCHOVER_FLOOR_S, switchover_timeout_s
from wanmig.parts import MEMORY, NETWORK, STORAGE, PartError, PartInfo, PartTable
from wanmig.runstate import RunState, Stage, StateError

FORWARD = [Stage.SOURCE_RUNNING, Stage.DESTINATION_PREPARED, Stage.COPYING, Stage.SOURCE_PAUSED]


def _at(stages: list[Stage], *, started: bool = True) -> RunState:
    s = RunState()
    for stage in stages:
        if stage is Stage.DESTINATION_PREPARED and started:
            s.destination_created()
        s.enter(stage)
    return s


def test_a_live_destination_must_be_fenced_before_the_source_resumes() -> None:
    s = _at(FORWARD)
    assert not s.may_resume_source()       # B alive: it could still be let run
    s.destination_dead()
    assert s.may_resume_source()
    s.enter(Stage.ROLLED_BACK)
    assert [n["name"] for n in s.to_list()][-1] == "rolled-back"


def test_before_any_destination_the_source_may_resume() -> None:
    assert _at([Stage.SOURCE_RUNNING], started=False).may_resume_source()


def test_once_the_destination_may_have_run_the_source_never_resumes() -> None:
    s = _at(FORWARD)
    s.enter(Stage.DESTINATION_RUNNING)
    s.destination_dead()                    # dead after it ran: still no
    assert not s.may_resume_source() and s.destination_may_have_run
    with pytest.raises(StateError, match="rollback after the destination may have run"):
        s.enter(Stage.ROLLED_BACK)
    s.enter(Stage.VM_LOST)
    assert s.ended and "may_resume_source=False" in repr(s)


def test_states_only_move_forward_and_end_once() -> None:
    s = _at(FORWARD)
    with pytest.raises(StateError, match="backwards"):
        s.enter(Stage.COPYING)
    s.enter(Stage.FAILED)
    with pytest.raises(StateError, match="already ended"):
        s.enter(Stage.FAILED)
    times = [e["at_ms"] for e in s.to_list()]
    assert times == sorted(times)


def test_switchover_bound_rides_out_a_3s_outage_and_stays_near_10s() -> None:
    continental = switchover_timeout_s(target_outage_ms=300, rtt_ms=50, rate_bit_s=100e6,
                                       backlog_bytes=4 << 20)
    assert continental == SWITCHOVER_FLOOR_S
    # 3 s outage: TCP's next retransmission comes at most 2 * 3 s + RTO later
    assert continental > 2 * 3.0 + 0.25
    slow = switchover_timeout_s(target_outage_ms=1000, rtt_ms=300, rate_bit_s=10e6,
                                backlog_bytes=4 << 20)
    assert SWITCHOVER_FLOOR_S < slow < 30


def test_part_tables_name_every_part_once_and_refuse_what_is_not_built() -> None:
    assert MEMORY.names(implemented=True) == ("precopy", "precopy-tuned", "postcopy", "hybrid",
                                              "auto")
    assert MEMORY.names("modelled") == ("precopy", "precopy-tuned", "postcopy", "hybrid")
    assert STORAGE.names(implemented=True) == ("shared", "mirror", "precopy", "postcopy",
                                              "hybrid", "auto")
    assert NETWORK.names(implemented=True) == ("l2-extend", "dns-tunnel", "mobile-ip", "route")
    later = PartTable("network", "network mode", [PartInfo("teleport", "named, not built")])
    with pytest.raises(PartError, match="not implemented yet"):
        later.info("teleport")
    with pytest.raises(PartError, match="unknown memory strategy 'warp'"):
        MEMORY.info("warp")
    for table in (MEMORY, STORAGE, NETWORK):
        for name in table.names(implemented=True):
            part = table.create(name)
            assert part.name == name and part.kind == table.kind


def test_running_intervals_and_their_overlap() -> None:
    from wanmig.runstate import overlap, running_intervals

    # A runs from its start, stops at 10 (switchover), resumed at 12 (a rollback), exits 20
    a = running_intervals([("STOP", 10.0), ("RESUME", 12.0)], started=0.0, ended=20.0,
                          running_at_start=True)
    assert a == [(0.0, 10.0), (12.0, 20.0)]
    # B starts paused (-S) and runs from its RESUME until it exits
    b = running_intervals([("RESUME", 11.0)], started=1.0, ended=15.0, running_at_start=False)
    assert b == [(11.0, 15.0)]
    assert overlap(a, b) == 3.0
    # the rule kept: B runs only after A's STOP and A never resumes
    safe = running_intervals([("STOP", 10.0)], started=0.0, ended=30.0, running_at_start=True)
    assert overlap(safe, b) == 0.0
    # a STOP without a RESUME before it, and a paused copy that never ran
    assert running_intervals([("STOP", 5.0)], started=0.0, ended=9.0,
                             running_at_start=False) == []
    assert running_intervals([], started=0.0, ended=9.0, running_at_start=False) == []
