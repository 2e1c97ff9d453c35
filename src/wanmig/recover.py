"""``wanmig recover RUN``: end a run whose controller died, by the run state's one rule.

A controller killed mid-run leaves both QEMUs alive: the source running, paused
before the switchover or stopped after it; the destination paused at ``-S``, or
running.  Nothing else decides for them, so an operator runs ``wanmig recover``
with the run's id (``wanmig clean`` lists it).  It reads the stage the run's
registry file last recorded (written before each stage is entered) and asks
the same question the engine asks at every end:

* the destination never received ``cont`` (stages up to ``source-paused``):
  the destination is fenced (SIGKILL, seen gone), the source's migration is
  cancelled and the source resumed, then ``announce-self`` from it so every
  bridge on the way sends the VM's frames back to A.  Status ``rolled_back``.
* the destination may have run (``destination-running``, ``source-stopped``):
  the source is never resumed.  A destination that runs, or that holds a
  completed incoming migration and waits paused, runs on (``cont``); a postcopy
  still moving pages is waited for (the two QEMUs finish it without the
  controller); then the source is stopped (``quit``) and B announces itself.
  Status ``completed``; a destination that is gone, or that cannot be finished,
  loses the VM (``vm_lost``), said so.

What a network mode announced beyond the VM's own frames (a BGP route, the
mobile-ip tunnel's route, a DNS record) is not undone or finished here: those
parts' state died with the controller (design doc, "Faults").  Recovery talks
to each QEMU on the controller's own monitor (free once the controller is dead;
the observer monitor stays an observer's) and takes at most ``timeout_s``.  A
QEMU whose process lives but does not answer is not taken for dead: the run
ends ``failed`` without ``vm_lost`` (its state is still in that process).  The
run's namespaces and processes stay until ``wanmig clean``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from .errors import ConfigError, QemuError
from .memory.migration import FAILED_STATES
from .network.l2extend import ANNOUNCE
from .qemu.process import agent_request, qmp_socket
from .registry import STATE_DIR, cmdline_of, pid_alive

#: Stages in which the destination has never received ``cont``.
BEFORE_CONT = ("source-running", "destination-prepared", "copying", "source-paused")
#: Stages in which it may have.
AFTER_CONT = ("destination-running", "source-stopped")
RECOVER_TIMEOUT_S = 60.0
QMP_TIMEOUT_S = 5.0
AGENT_TIMEOUT_S = 10.0
ACTIVE_STATES = frozenset({"setup", "active", "pre-switchover", "device", "wait-unplug",
                           "cancelling"})


@dataclass
class Recovery:
    """What ``recover`` found and did (the CLI prints it; ``--json`` writes it)."""

    run_id: str
    stage: str | None
    status: str = "failed"
    vm_lost: bool = False
    source: str | None = None          # run state at the end ("gone", "no answer")
    destination: str | None = None
    steps: list[str] = field(default_factory=list)
    took_ms: float = 0.0
    #: The guest in the copy that runs answered its agent's ``ping`` (None: none runs).
    guest_answers: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _qemu_pid(run_dir: Path, name: str) -> int | None:
    """The PID of the run's QEMU ``name``: the process whose command line names its
    monitor socket in the run directory."""
    marker = str(qmp_socket(run_dir, name))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and marker in cmdline_of(int(entry.name)):
            return int(entry.name)
    return None


@contextlib.asynccontextmanager
async def _monitor(run_dir: Path, name: str) -> AsyncIterator[QMPClient | None]:
    """A QMP session on QEMU ``name``'s controller monitor; None when it does not answer."""
    qmp = QMPClient(f"recover-{name}")
    try:
        await asyncio.wait_for(qmp.connect(str(qmp_socket(run_dir, name))), QMP_TIMEOUT_S)
    except (OSError, QMPError, asyncio.TimeoutError):
        yield None
        return
    try:
        yield qmp
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(qmp.disconnect(), QMP_TIMEOUT_S)


async def _ask(qmp: QMPClient, cmd: str, args: dict[str, Any] | None = None) -> Any:
    try:
        return await asyncio.wait_for(qmp.execute(cmd, args), QMP_TIMEOUT_S)
    except (QMPError, asyncio.TimeoutError, OSError) as exc:
        raise QemuError(f"{cmd}: {exc or 'no answer'}") from exc


async def _status(qmp: QMPClient) -> str:
    return str((await _ask(qmp, "query-status"))["status"])


async def _guest_answers(run_dir: Path, name: str) -> bool:
    """``ping`` to the guest's agent in QEMU ``name`` answered ``pong`` in time."""
    try:
        return await agent_request(run_dir, name, "ping", AGENT_TIMEOUT_S) == "pong"
    except QemuError:
        return False


async def _state_of(run_dir: Path, name: str) -> str:
    """QEMU ``name``'s run state, "gone" or "no answer"."""
    async with _monitor(run_dir, name) as qmp:
        if qmp is None:
            return "gone" if _qemu_pid(run_dir, name) is None else "no answer"
        try:
            return await _status(qmp)
        except QemuError:
            return "no answer"


async def _fence(run_dir: Path, name: str, steps: list[str], deadline: float) -> None:
    """SIGKILL QEMU ``name`` and see it gone."""
    pid = _qemu_pid(run_dir, name)
    if pid is None:
        steps.append(f"{name}: no process (already gone)")
        return
    os.kill(pid, signal.SIGKILL)
    while pid_alive(pid) and str(run_dir) in cmdline_of(pid):
        if time.monotonic() > deadline:
            raise QemuError(f"{name} (pid {pid}) still alive after SIGKILL")
        await asyncio.sleep(0.05)
    steps.append(f"{name}: killed (pid {pid}) and seen gone")


async def _wait(qmp: QMPClient, what: str, done: Any, deadline: float) -> Any:
    """Poll ``query-migrate`` until ``done(status)``; its last status."""
    while True:
        status = (await _ask(qmp, "query-migrate")).get("status", "none")
        if done(status):
            return status
        if time.monotonic() > deadline:
            raise QemuError(f"{what}: still {status!r} at the deadline")
        await asyncio.sleep(0.2)


async def _roll_back(run_dir: Path, rec: Recovery, deadline: float) -> None:
    await _fence(run_dir, "vm-b", rec.steps, deadline)
    async with _monitor(run_dir, "vm-a") as a:
        if a is None:
            if _qemu_pid(run_dir, "vm-a") is None:
                rec.vm_lost = True
                rec.steps.append("vm-a: gone; the destination never ran: the VM is lost")
            else:
                rec.steps.append("vm-a: alive but does not answer: not resumed (its state "
                                 "is still there)")
            return
        status = (await _ask(a, "query-migrate")).get("status", "none")
        if status in ACTIVE_STATES:
            await _ask(a, "migrate_cancel")
            status = await _wait(a, "cancelling the source's migration",
                                 lambda s: s not in ACTIVE_STATES, deadline)
            rec.steps.append(f"vm-a: migration cancelled ({status})")
        if await _status(a) != "running":
            await _ask(a, "cont")
            rec.steps.append("vm-a: cont")
        await _ask(a, "announce-self", dict(ANNOUNCE))
        rec.status = "rolled_back"   # only if A runs and its guest answers (``recover``)


async def _finish_at_b(run_dir: Path, rec: Recovery, deadline: float) -> None:
    async with _monitor(run_dir, "vm-b") as b, _monitor(run_dir, "vm-a") as a:
        if b is None:
            if _qemu_pid(run_dir, "vm-b") is None:
                rec.vm_lost = True
                rec.steps.append("vm-b: gone after it may have run; the source is never "
                                 "resumed: the VM is lost")
            else:
                rec.steps.append("vm-b: alive but does not answer: left as it is (the source "
                                 "is never resumed)")
            return
        incoming = (await _ask(b, "query-migrate")).get("status", "none")
        if incoming.startswith("postcopy"):
            watch = a if a is not None else b
            try:
                incoming = await _wait(watch, "postcopy", lambda s: s in ("completed",
                                                                          *FAILED_STATES),
                                       deadline)
            except QemuError:
                incoming = "failed"
            rec.steps.append(f"postcopy ended: {incoming}")
        state = await _status(b)
        if state != "running" and incoming == "completed":
            await _ask(b, "cont")
            rec.steps.append("vm-b: cont (its incoming migration had completed)")
            state = await _status(b)
        if state != "running" or incoming in FAILED_STATES:
            rec.vm_lost = True
            rec.steps.append(f"vm-b: {state}, incoming {incoming}: cannot run; the source is "
                             "never resumed: the VM is lost")
            return
        await _ask(b, "announce-self", dict(ANNOUNCE))
        rec.status = "completed"
        if a is not None:
            with contextlib.suppress(QemuError):
                await _ask(a, "quit")
            rec.steps.append("vm-a: quit (a stale copy, never resumed)")
    await _fence(run_dir, "vm-a", rec.steps, deadline)


async def recover(run_id: str, *, timeout_s: float = RECOVER_TIMEOUT_S) -> Recovery:
    """End run ``run_id``, whose controller is dead, by the rule (module docstring)."""
    started = time.monotonic()
    path = STATE_DIR / f"{run_id}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no run {run_id!r} in {STATE_DIR}", field="run") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", field="run") from exc
    owner = int(data.get("owner_pid", 0))
    if owner and pid_alive(owner) and owner != os.getpid():
        raise ConfigError(f"run {run_id} is still owned by live pid {owner}: its controller "
                          "decides", field="run")
    run_dir = STATE_DIR / run_id
    rec = Recovery(run_id=run_id, stage=data.get("stage"))
    deadline = started + timeout_s
    if rec.stage in BEFORE_CONT:
        await _roll_back(run_dir, rec, deadline)
    elif rec.stage in AFTER_CONT:
        await _finish_at_b(run_dir, rec, deadline)
    else:
        rec.steps.append(f"the run had ended ({rec.stage}): nothing to decide")
        rec.status = "rolled_back" if rec.stage == "rolled-back" else "failed"
        rec.vm_lost = rec.stage == "vm-lost"
    rec.source, rec.destination = [await _state_of(run_dir, name) for name in ("vm-a", "vm-b")]
    running = [n for n, st in (("vm-a", rec.source), ("vm-b", rec.destination))
               if st == "running"]
    if running:
        rec.guest_answers = await _guest_answers(run_dir, running[0])
        rec.steps.append(f"{running[0]}: the guest "
                         f"{'answers' if rec.guest_answers else 'does not answer'} its agent")
    if rec.status in ("completed", "rolled_back") and not rec.guest_answers:
        rec.status = "failed"   # QEMU runs, but the guest is no use to anybody
    rec.took_ms = round((time.monotonic() - started) * 1000, 1)
    return rec
