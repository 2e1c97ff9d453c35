"""Faults end safely: no stale copy ever runs, and a VM that never left keeps running at A.

Each test migrates a real guest between two namespace sites over the emulated
continental WAN and injects one fault (``[fault]`` in the scenario, or a
signal to ``wanmig migrate``).  What is checked is the run state's rule: the
source is resumed only while the destination has never run, and once it may
have, the source is never resumed (its QEMU never reports RESUME after the
switchover started).  Every test also checks nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from wanmig.bench.faults import RunSampler
from wanmig.config import parse_scenario
from wanmig.orchestrator import Orchestrator
from wanmig.record import ResultRecord
from wanmig.registry import run_owned_by

from ..conftest import run_netns_names

pytestmark = [pytest.mark.root, pytest.mark.qemu]

WANMIG = Path(sys.executable).with_name("wanmig")
SMALL_VM = {"ram_mib": 192}


async def _run(name: str, **tables: Any) -> ResultRecord:
    data: dict[str, Any] = {"name": name, "vm": SMALL_VM, **tables}
    return await Orchestrator(parse_scenario(data)).run()


def _state_names(rec: ResultRecord) -> list[str]:
    return [s.name for s in rec.states]


def _at(rec: ResultRecord, state: str) -> float:
    return next(s.at_ms for s in rec.states if s.name == state)


def _answers_at_a(rec: ResultRecord) -> None:
    assert rec.model_extra and rec.model_extra["source_state_after_rollback"] == "running"
    assert rec.network.new_conn_ms is not None, "no new connection to the VM at A"
    assert rec.network.tcp_survived is True
    assert rec.integrity.ok and rec.integrity.guest_log_gaps == 0


async def test_destination_dies_after_it_ran_the_source_is_never_resumed(
        leaves_nothing_behind) -> None:
    rec = await _run("fault-after-resume", fault={"kill_destination": "after-resume"})

    assert rec.status == "failed", rec.error
    assert rec.model_extra and rec.model_extra["vm_lost"] is True
    assert _state_names(rec)[-2:] == ["destination-running", "vm-lost"]
    # the source stopped at pre-switchover and QEMU never ran it again
    assert rec.vm.source_events is not None
    paused = _at(rec, "source-paused")
    assert not [e for e in rec.vm.source_events if e.name == "RESUME" and e.at_ms >= paused - 50]
    assert rec.vm.destination_events and rec.vm.destination_events[0].name == "RESUME"
    assert rec.integrity.guest_log_out_of_order == 0 and rec.integrity.guest_log_malformed == 0
    assert rec.integrity.both_running_ms == 0


async def test_long_outage_at_switchover_rolls_back_to_a_vm_that_never_left(
        leaves_nothing_behind) -> None:
    rec = await _run("fault-outage-30", fault={"link_down_phase": "switchover",
                                               "link_down_s": 30})

    assert rec.status == "rolled_back", rec.error
    assert "switchover did not complete" in (rec.error or "")
    assert "destination-running" not in _state_names(rec)
    assert _state_names(rec)[-1] == "rolled-back"
    bound = rec.model_extra["switchover_timeout_s"]
    assert 6.5 < bound <= 20
    # gave up after the bound, not after the outage: long before the link came back
    assert _at(rec, "rolled-back") - _at(rec, "source-paused") < (bound + 8) * 1000
    assert not rec.vm.destination_events, "the destination must never have run"
    _answers_at_a(rec)


async def test_short_outage_at_switchover_is_ridden_out(leaves_nothing_behind) -> None:
    rec = await _run("fault-outage-3", fault={"link_down_phase": "switchover",
                                              "link_down_s": 3})

    assert rec.status == "completed", rec.error
    assert rec.network.client_outage_ms is not None and rec.network.client_outage_ms > 2500
    assert rec.integrity.ok and rec.integrity.destination_disk_writes


async def test_outage_during_memory_copy_is_survived(leaves_nothing_behind) -> None:
    rec = await _run("fault-outage-memory", fault={"link_down_phase": "memory",
                                                   "link_down_s": 10})

    assert rec.status == "completed", rec.error
    assert rec.network.tcp_survived is True
    assert [f["fault"] for f in rec.model_extra["faults"]] == ["link_down", "link_up"]
    memory = next(p for p in rec.phases if p.name == "memory")
    assert memory.end_ms - memory.start_ms > 10_000
    assert rec.integrity.ok and rec.integrity.destination_disk_writes


async def test_outage_during_postcopy_is_recovered_without_an_operator(
        leaves_nothing_behind) -> None:
    """B runs on borrowed pages when the link goes for 10 s: the stalled stream is paused
    on both sides and resumed on a new connection once the link is back."""
    rec = await _run("fault-outage-postcopy", memory={"strategy": "postcopy"},
                     fault={"link_down_phase": "postcopy", "link_down_s": 10})

    assert rec.status == "completed", rec.error
    faults = rec.model_extra["faults"]
    assert [f["fault"] for f in faults] == ["link_down", "link_up"]
    assert faults[0]["point"] == "postcopy"
    recoveries = rec.memory.postcopy_recoveries
    assert recoveries and recoveries[0]["how"] in ("stalled", "broken"), recoveries
    assert recoveries[0]["tries"] >= 1 and recoveries[0]["paused_ms"] > 2000
    assert rec.model_extra.get("vm_lost") is None
    # one copy: A never resumed once B ran, and never ran while B did
    assert "source-stopped" in _state_names(rec)
    assert rec.integrity.both_running_ms == 0
    assert rec.integrity.ok and rec.integrity.guest_log_gaps == 0
    assert rec.integrity.guest_log_out_of_order == 0
    assert rec.integrity.destination_disk_writes


# -- signals to the controller ---------------------------------------------------------------

#: A guest precopy cannot converge on (20 MB/s of fresh random writes), so the run
#: is reliably in its memory phase when the signal comes.
BUSY = """
name = "{name}"
[vm]
ram_mib = 192
workload = "dirty"
dirty_mib = 64
dirty_rate_mbps = 20
[memory]
timeout_s = 120
tls = false
"""


def _start_controller(tmp_path: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    scenario = tmp_path / f"{name}.toml"
    scenario.write_text(BUSY.format(name=name))
    out = tmp_path / "record.json"
    proc = subprocess.Popen([str(WANMIG), "migrate", "--scenario", str(scenario), "--json",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    return proc, out


def _wait_for_stage(proc: subprocess.Popen[str], stage: str | None, timeout: float) -> Path:
    """The run directory once the run's registry says ``stage`` (None: as soon as it has
    one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        found = run_owned_by(proc.pid)
        if found and (stage is None or found[1] == stage):
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"the run never reached {stage}")


async def test_sigint_during_memory_rolls_back_and_writes_the_record(
        tmp_path: Path, leaves_nothing_behind) -> None:
    proc, out = _start_controller(tmp_path, "sigint")
    try:
        await asyncio.to_thread(_wait_for_stage, proc, "copying", 120)
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        output, _ = await asyncio.to_thread(proc.communicate, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output[-2000:]
    rec = ResultRecord.read(out)
    assert rec.status == "rolled_back" and "interrupted (SIGINT)" in (rec.error or "")
    assert rec.model_extra and rec.model_extra["interrupted"] == "SIGINT"
    assert _state_names(rec)[-1] == "rolled-back"
    _answers_at_a(rec)


async def test_sigkill_of_the_controller_leaves_one_copy_and_clean_removes_all(
        tmp_path: Path, leaves_nothing_behind) -> None:
    proc, _ = _start_controller(tmp_path, "sigkill")
    sampler = RunSampler(proc.pid)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    try:
        run_dir = await asyncio.to_thread(_wait_for_stage, proc, "copying", 120)
        await asyncio.sleep(2.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        await asyncio.sleep(5.0)   # the QEMUs live on without their controller
        cleaned = await asyncio.to_thread(subprocess.run, [str(WANMIG), "clean"],
                                          capture_output=True, text=True, timeout=120)
        assert cleaned.returncode == 0, cleaned.stderr
        assert "(it was copying)" in cleaned.stdout
    finally:
        stop.set()
        await sampling
        if proc.poll() is None:
            proc.kill()
    seen = {name: [status for _, n, status in sampler.samples if n == name]
            for name in ("vm-a", "vm-b")}
    assert seen["vm-a"] and seen["vm-b"], "both QEMUs were sampled"
    assert "running" in seen["vm-a"]
    assert sampler.both_running() == 0, "two running copies were seen"
    assert not run_dir.exists()
    assert not {n for n in run_netns_names() if n.startswith(f"wm{run_dir.name}")}


# -- the source's death, a hung QEMU, the controller's death -----------------------------------


async def test_source_dies_during_memory_copy_the_vm_is_lost_and_said_so(
        leaves_nothing_behind) -> None:
    rec = await _run("fault-source-memory", fault={"kill_source": "memory"})

    assert rec.status == "failed" and "the source QEMU died" in (rec.error or "")
    assert rec.model_extra and rec.model_extra["vm_lost"] is True
    assert "only complete copy" in rec.model_extra["lost"]
    assert _state_names(rec)[-1] == "vm-lost"
    assert not rec.vm.destination_events, "the destination, never complete, must not run"


async def test_source_hung_at_the_switchover_rolls_back_once_it_answers(
        leaves_nothing_behind) -> None:
    """SIGSTOP for 12 s while A is paused: the switchover's bound runs out, B (never run)
    is fenced, and A runs again once it answers; one copy throughout."""
    rec = await _run("fault-hang-source", fault={"hang": "source", "hang_phase": "switchover",
                                                 "hang_s": 12})

    assert rec.status == "rolled_back", rec.error
    assert [f["fault"] for f in rec.model_extra["faults"]] == ["hang", "hang_end"]
    assert not rec.vm.destination_events
    assert rec.integrity.both_running_ms == 0
    _answers_at_a(rec)


@contextlib.asynccontextmanager
async def _crashed_and_recovered(tmp_path: Path, point: str) -> AsyncIterator[dict[str, Any]]:
    """``wanmig migrate`` kills itself at ``point``, ``wanmig recover`` ends the run (what
    it wrote with ``--json``), and ``wanmig clean`` removes the run whatever happened."""
    scenario = tmp_path / f"crash-{point}.json"
    scenario.write_text(json.dumps({"name": f"crash-{point}", "vm": SMALL_VM,
                                    "memory": {"tls": False},
                                    "fault": {"kill_controller": point}}))
    proc = subprocess.Popen([str(WANMIG), "migrate", "--scenario", str(scenario)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    run_dir: Path | None = None
    try:
        run_dir = await asyncio.to_thread(_wait_for_stage, proc, None, 120)
        output, _ = await asyncio.to_thread(proc.communicate, timeout=300)
        assert proc.returncode == -signal.SIGKILL, output[-2000:]
        out = tmp_path / "recovery.json"
        recovered = await asyncio.to_thread(
            subprocess.run, [str(WANMIG), "recover", run_dir.name, "--json", str(out)],
            capture_output=True, text=True, timeout=120)
        assert recovered.returncode == 0, recovered.stdout + recovered.stderr
        yield json.loads(out.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
        cleaned = await asyncio.to_thread(subprocess.run, [str(WANMIG), "clean"],
                                          capture_output=True, text=True, timeout=120)
        assert cleaned.returncode == 0, cleaned.stderr
        assert run_dir is None or f"run {run_dir.name}" in cleaned.stdout, cleaned.stdout


@pytest.mark.parametrize("point,stage,status,source,destination", [
    ("pre-switchover", "source-paused", "rolled_back", "running", "gone"),
    ("after-resume", "destination-running", "completed", "gone", "running"),
], ids=["before-the-switch", "after-the-switch"])
async def test_controller_killed_recover_ends_the_run_by_the_rule(
        tmp_path: Path, point: str, stage: str, status: str, source: str, destination: str,
        leaves_nothing_behind) -> None:
    """Before B may have run, recover fences B and resumes A; after, B runs on and A goes;
    either way the guest that runs answers its agent."""
    async with _crashed_and_recovered(tmp_path, point) as rec:
        assert rec["stage"] == stage
        assert (rec["status"], rec["vm_lost"]) == (status, False)
        assert (rec["source"], rec["destination"]) == (source, destination)
        assert rec["guest_answers"] is True
        if status == "rolled_back":
            assert any("vm-b: killed" in s for s in rec["steps"]), rec["steps"]
