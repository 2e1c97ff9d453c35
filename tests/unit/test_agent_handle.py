"""``AgentHandle``'s shared life against a tiny Python agent (no namespace, no network)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

import pytest

from wanmig.agent_handle import AgentHandle
from wanmig.children import ChildState, strip_event
from wanmig.errors import ProbeError
from wanmig.probe import ClientProbe, ProbeState
from wanmig.workload import WebLoad, WebLoadState

AGENT = r"""
import json, sys
def say(**event):
    print(json.dumps(event), flush=True)
if sys.argv[1] == "die":
    print("no target", file=sys.stderr, flush=True)
    sys.exit(2)
say(event="ready", mode=sys.argv[1])
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "mark":
        say(event="marked", name=cmd[1], t_ms=12.5)
    elif cmd[0] == "stop":
        say(event="report", count=3) if sys.argv[1] == "ok" else say(event="report")
        break
"""


@dataclasses.dataclass(frozen=True)
class FakeReport:
    count: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FakeReport:
        return cls(**strip_event(data))  # no count: TypeError, as a dataclass report


class FakeAgent(AgentHandle[FakeReport]):
    noun = "fake"
    agent_name = "fake agent"
    report_type = FakeReport
    stop_timeout = 5.0

    def __init__(self, mode: str) -> None:
        super().__init__(netns=None, python=sys.executable, registry=None,
                         log=logging.getLogger("test.fake"))
        self.mode = mode

    def _describe(self) -> str:
        return f"mode={self.mode!r}"

    def _argv(self, *, ready_timeout: float, owner: str | None) -> list[str]:
        return [self.python, "-c", AGENT, self.mode]


async def test_start_mark_stop_and_the_report_is_kept() -> None:
    async with FakeAgent("ok") as agent:
        assert agent.state is ChildState.RUNNING and agent.ready_info["mode"] == "ok"
        assert repr(agent) == f"FakeAgent(mode='ok', state=running, pid={agent.pid})"
        assert await agent.mark("switchover") == 12.5
        report = await agent.stop()
    assert report == FakeReport(3) and agent.state is ChildState.STOPPED
    assert await agent.stop() is report  # stopped: the same report again


async def test_an_agent_that_dies_before_ready_is_reaped() -> None:
    agent = FakeAgent("die")
    with pytest.raises(ProbeError, match=r"fake agent exited \(code 2\).*no target"):
        await agent.start(timeout=10.0)
    assert agent.state is ChildState.STOPPED and agent._agent is not None
    assert agent._agent.returncode == 2
    with pytest.raises(ProbeError, match="cannot start a fake in state stopped"):
        await agent.start()


async def test_an_unreadable_report_names_the_agent_and_it_is_still_reaped() -> None:
    agent = FakeAgent("bad")
    await agent.start(timeout=10.0)
    with pytest.raises(ProbeError, match="unreadable fake report") as info:
        await agent.stop()
    assert isinstance(info.value.cause, TypeError)
    assert agent.state is ChildState.STOPPED and agent._agent is not None
    assert agent._agent.returncode == 0


async def test_commands_are_refused_unless_running() -> None:
    agent = FakeAgent("ok")
    with pytest.raises(ProbeError, match="fake is idle, cannot mark"):
        await agent.mark("x")
    with pytest.raises(ProbeError, match="bad mark name"):
        await agent.mark("two\nlines")


def test_both_handles_share_one_state_machine_with_their_own_defaults() -> None:
    assert ProbeState is ChildState and WebLoadState is ChildState
    assert (ClientProbe.noun, ClientProbe.stop_timeout) == ("probe", 15.0)
    assert (WebLoad.noun, WebLoad.stop_timeout) == ("web load", 10.0)
    assert repr(WebLoad("10.77.0.10", netns="c", rate=5)) == (
        "WebLoad(target='10.77.0.10', netns='c', rate=5/s, state=idle, pid=None)")
