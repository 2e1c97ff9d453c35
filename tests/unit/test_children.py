"""children.py: ``JsonLinesChild`` against a tiny Python child that speaks the JSON-lines
protocol, ``run_command`` against real short commands, ``module_argv`` on its output."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from wanmig import registry as registry_module
from wanmig import children
from wanmig.children import ChildState, JsonLinesChild, module_argv, run_command, strip_event
from wanmig.errors import NetworkError, ProbeError
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
    elif cmd[0] == "stop":
        say(event="report", lines=1)
        break
"""


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setattr(registry_module, "STATE_DIR", tmp_path)
    return Registry("t1")


async def _started(registry: Registry | None = None) -> JsonLinesChild:
    child = JsonLinesChild([sys.executable, "-c", CHILD], name="test child",
                           error=ProbeError, registry=registry)
    assert await child.start(10.0) == {} == child.ready_info
    return child


async def test_commands_are_answered_and_the_child_is_reaped(registry: Registry) -> None:
    child = await _started(registry)
    assert child.state is ChildState.RUNNING and registry.pids == [child.pid]
    event = await child.command("echo hello", "echo", 5.0)  # skips the noise before it
    assert strip_event(event) == {"text": "hello"}
    assert await child.close(5.0) == 0  # EOF on stdin: it finishes by itself
    assert child.state is ChildState.STOPPED and registry.pids == []
    assert "state=stopped" in repr(child) and "returncode=0" in repr(child)
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
    assert child.state is ChildState.STOPPED and child.returncode == -9


async def test_a_child_that_cannot_run_raises_the_owners_error() -> None:
    child = JsonLinesChild(["/nonexistent/tool"], name="tool", error=ProbeError)
    with pytest.raises(ProbeError, match="cannot run tool"):
        await child.spawn()
    assert child.state is ChildState.STOPPED and child.pid is None
    await child.kill()  # nothing to do, no error


async def test_finish_waits_for_a_command_in_flight_then_reaps(registry: Registry) -> None:
    child = await _started(registry)
    slow = asyncio.create_task(child.command("sleep 0.3", "slept", 5.0))
    await asyncio.sleep(0.05)
    event = await child.finish("report", 5.0)  # "stop" + EOF only once "sleep" is answered
    assert (await slow)["event"] == "slept" and strip_event(event) == {"lines": 1}
    assert child.state is ChildState.STOPPED and child.returncode == 0 and registry.pids == []
    with pytest.raises(ProbeError, match="cannot finish in state stopped"):
        await child.finish("report", 1.0)


async def test_a_child_that_is_not_ready_in_time_is_killed() -> None:
    child = JsonLinesChild([sys.executable, "-c", "import time; time.sleep(30)"],
                           name="mute", error=ProbeError)
    with pytest.raises(ProbeError, match="mute gave no ready answer within 0.3 s"):
        await child.start(0.3)
    assert child.state is ChildState.STOPPED and child.returncode == -9


async def test_a_cancelled_finish_kills_and_reaps() -> None:
    child = await _started()
    await child.command("echo x", "echo", 5.0)
    async with child:  # its end kills what still runs; idempotent after finish
        task = asyncio.create_task(child.finish("never", 30.0, last_line=None))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert child.state is ChildState.STOPPED and child.returncode == -9
    assert "state=stopped" in repr(child)


# ------------------------------------------------------------------ command lines

def test_module_argv_names_the_owner_before_the_modules_own_arguments() -> None:
    assert module_argv("wanmig.wan.tools", ["udp-echo", "--port", "7"], python="py",
                       netns="wm1-b", owner="/run/wanmig/x") == [
        "ip", "netns", "exec", "wm1-b", "py", "-m", "wanmig.wan.tools",
        "--owner", "/run/wanmig/x", "udp-echo", "--port", "7"]
    assert module_argv("m", ["-v"], python="py") == ["py", "-m", "m", "-v"]


def test_owner_of_is_the_runs_directory(registry: Registry) -> None:
    assert children.owner_of(registry) == str(registry.run_dir)
    assert children.owner_of(None) is None


# ------------------------------------------------------------------ short commands

def _gone(pid: int) -> bool:
    """Reaped: no /proc entry (a zombie would still have one, in state Z)."""
    return not os.path.exists(f"/proc/{pid}")


async def _spawned_pid(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pids: list[int] = []
    real = asyncio.create_subprocess_exec

    async def recording(*argv: str, **kw: object) -> asyncio.subprocess.Process:
        proc = await real(*argv, **kw)  # type: ignore[arg-type]
        pids.append(proc.pid)
        return proc

    monkeypatch.setattr(children.asyncio, "create_subprocess_exec", recording)
    return pids


async def test_run_command_returns_code_stdout_and_stderr() -> None:
    done = await run_command(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=5.0,
                             error=NetworkError, check=False)
    assert (done.code, done.out, done.err) == (3, "out\n", "err")
    with pytest.raises(NetworkError, match="^probe failed: err$"):
        await run_command(["sh", "-c", "echo err >&2; exit 3"], timeout=5.0,
                          error=NetworkError, what="probe")
    with pytest.raises(NetworkError, match="cannot run /nonexistent/tool"):
        await run_command(["/nonexistent/tool"], timeout=5.0, error=NetworkError)


async def test_run_command_kills_and_reaps_a_command_that_overruns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pids = await _spawned_pid(monkeypatch)
    with pytest.raises(NetworkError, match="^sleep 30 timed out after 0.2 s$") as info:
        await run_command(["sleep", "30"], timeout=0.2, error=NetworkError)
    assert isinstance(info.value.cause, TimeoutError)
    assert len(pids) == 1 and _gone(pids[0])


async def test_run_command_kills_and_reaps_when_cancelled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pids = await _spawned_pid(monkeypatch)
    task = asyncio.create_task(run_command(["sleep", "30"], timeout=60.0, error=NetworkError))
    await asyncio.sleep(0.3)
    assert len(pids) == 1 and not _gone(pids[0])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _gone(pids[0])
