"""``JsonLinesChild`` against a tiny Python child that speaks the JSON-lines protocol."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from wanmig import registry as registry_module
from wanmig.children import ChildState, JsonLinesChild, strip_event
from wanmig.errors import ProbeError
from wanmig.registry import Registry

CHILD = r"""
import json, sys, time
def say(**event):
    print(json.dumps(event), flush=True)
say(event="ready")
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "echo":
        print("not json", flush=True)
        say(event="noise")
        say(event="echo", text=cmd[1])
    elif cmd[0] == "fail":
        say(event="error", message="it failed")
    elif cmd[0] == "die":
        print("dying now", file=sys.stderr, flush=True)
        sys.exit(3)
    elif cmd[0] == "sleep":
        time.sleep(float(cmd[1]))
        say(event="slept")
"""


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setattr(registry_module, "STATE_DIR", tmp_path)
    return Registry("t1")


async def _started(registry: Registry | None = None) -> JsonLinesChild:
    child = JsonLinesChild([sys.executable, "-c", CHILD], name="test child",
                           error=ProbeError, registry=registry)
    await child.spawn()
    assert await child.next_event("ready", 10.0) == {"event": "ready"}
    return child


async def test_commands_are_answered_and_the_child_is_reaped(registry: Registry) -> None:
    child = await _started(registry)
    assert child.state is ChildState.RUNNING and registry.pids == [child.pid]
    event = await child.command("echo hello", "echo", 5.0)  # skips the noise before it
    assert strip_event(event) == {"text": "hello"}
    assert await child.close(5.0) == 0  # EOF on stdin: it finishes by itself
    assert child.state is ChildState.CLOSED and registry.pids == []
    assert "state=closed" in repr(child) and "returncode=0" in repr(child)
    await child.close(5.0)  # idempotent
    with pytest.raises(ProbeError, match="takes no more commands"):
        await child.send("echo again")


async def test_an_error_event_raises_the_owners_error() -> None:
    child = await _started()
    try:
        with pytest.raises(ProbeError, match="^test child: it failed$"):
            await child.command("fail", "failed", 5.0)
    finally:
        await child.kill()


async def test_an_exit_before_the_answer_says_code_and_stderr() -> None:
    child = await _started()
    with pytest.raises(ProbeError, match=r"exited \(code 3\) before die: dying now"):
        await child.command("die", "never", 5.0)
    await child.close(5.0)
    assert child.returncode == 3


async def test_every_wait_has_a_timeout_and_one_command_runs_at_a_time() -> None:
    child = await _started()
    try:
        first = asyncio.create_task(child.command("sleep 1", "slept", 5.0))
        await asyncio.sleep(0.1)
        with pytest.raises(ProbeError, match="busy: echo not sent within 0.2 s"):
            await child.command("echo x", "echo", 0.2)
        assert (await first)["event"] == "slept"
        with pytest.raises(ProbeError, match="gave no sleep answer within 0.2 s"):
            await child.command("sleep 5", "slept", 0.2)
    finally:
        await child.kill()
    assert child.returncode == -9


async def test_cancellation_is_not_swallowed() -> None:
    child = await _started()
    task = asyncio.create_task(child.command("sleep 5", "slept", 10.0))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await child.kill()
    assert child.state is ChildState.CLOSED and child.returncode == -9


async def test_a_child_that_cannot_run_raises_the_owners_error() -> None:
    child = JsonLinesChild(["/nonexistent/tool"], name="tool", error=ProbeError)
    with pytest.raises(ProbeError, match="cannot run tool"):
        await child.spawn()
    assert child.state is ChildState.CLOSED and child.pid is None
    await child.kill()  # nothing to do, no error
