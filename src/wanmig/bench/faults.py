"""``wanmig bench faults``: the fault campaign, every fault the engine injects, one run each.

The matrix (``plan_cases``, pure): WAN outages of 2, 10 and 30 s (``[fault]
link_down_phase``/``link_down_s``) in each phase they can hit -- the memory copy and the
switchover under QEMU's precopy, B running on borrowed pages under postcopy, the disk
copy under each storage strategy that copies (disks compared after the run) -- and, at
10 s during the switchover, under each network mode; the destination killed at each
point (``kill_destination``); the source killed, the source or the destination hung
for 10 s (SIGSTOP, then SIGCONT), and the controller killed, at each point.

Each run is one full migration by the orchestrator (the controller's death: a ``wanmig
migrate`` child that kills itself, then ``wanmig recover``, ``controller_killed``); its
entry is the result record plus what the campaign judges (``verdict``): whether it ended
as the rule says it must (``expected_end``: the VM kept, or lost and said so where the
only complete copy died), how long both copies ran at once (``integrity.both_running_ms``,
from QEMU's own STOP/RESUME events; for a dead controller, whole 100 ms samples of both
QEMUs' run states), and what the run left behind (``registry.leftovers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from ..config import parse_scenario
from ..errors import ConfigError, WanmigError
from ..qemu.process import observer_socket
from ..recover import recover
from ..registry import clean_leftovers, leftovers, run_owned_by
from .runner import RUN_FIGURES, BenchRun, Entry, Figures, Say, field_of

if TYPE_CHECKING:
    from ..orchestrator import Ui

OUTAGES_S = (2, 10, 30)
NETWORK_OUTAGE_S = 10
SMALL_VM = {"ram_mib": 192}
DISK_VM = {"ram_mib": 256, "base": "debian", "disk_mib": 2048, "disk_write_mbps": 2.0}
#: The storage strategies that copy: mirror, precopy and hybrid in the storage phase,
#: postcopy after B runs (its fetch and stream; ``storage-progress`` fires there).
#: libvirt's default mirror never gets ready while the guest writes (``wanmig bench
#: storage``): its synchronous mode, what an operator falls back to, is the one tried.
STORAGE_CASES = {"mirror-sync": {"strategy": "mirror", "synchronous_writes": True},
                 "precopy": {"strategy": "precopy"}, "hybrid": {"strategy": "hybrid"},
                 "postcopy": {"strategy": "postcopy"}}
STORAGE_TIMEOUT_S = 120.0
KILL_POINTS = ("memory", "pre-switchover", "after-resume", "postcopy")
SOURCE_KILL_POINTS = ("memory", "pre-switchover", "switchover", "after-resume", "postcopy")
HANG_S = 10
#: The controller's own death: ``kill_controller`` in a ``wanmig migrate`` child, then
#: ``wanmig recover`` here; both QEMUs' run states sampled this often throughout.
SAMPLE_S = 0.1
WANMIG = Path(sys.executable).with_name("wanmig")
CONTROLLER_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class FaultCase:
    name: str
    fault: dict[str, Any]
    tables: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, Any]:
        return {"fault": self.fault}

    def scenario(self) -> dict[str, Any]:
        tables = json.loads(json.dumps(self.tables))
        tables.setdefault("vm", dict(SMALL_VM))
        return {"name": "faults-" + self.name.replace("/", "-"), **tables,
                "fault": self.fault}


def _outage(phase: str, seconds: int) -> dict[str, Any]:
    return {"link_down_phase": phase, "link_down_s": seconds}


def _disk_copy(name: str) -> dict[str, Any]:
    """A guest with a Debian disk it writes to, copied by ``STORAGE_CASES[name]`` (the
    disks compared after the run)."""
    return {"vm": dict(DISK_VM),
            "storage": {**STORAGE_CASES[name], "timeout_s": STORAGE_TIMEOUT_S, "verify": True},
            "memory": {"strategy": "precopy-tuned"}}


def _postcopy_if(point: str) -> dict[str, Any]:
    return {"memory": {"strategy": "postcopy"}} if point == "postcopy" else {}


def plan_cases(only: Sequence[str] | None = None) -> list[FaultCase]:
    """The whole matrix, or the cases whose name starts with one of ``only``
    (``link/postcopy``, say); ConfigError where nothing matches."""
    cases = []
    for seconds in OUTAGES_S:
        for phase in ("memory", "switchover"):
            cases.append(FaultCase(f"link/precopy/{phase}/{seconds}s", _outage(phase, seconds)))
        cases.append(FaultCase(f"link/postcopy/postcopy/{seconds}s",
                               _outage("postcopy", seconds),
                               {"memory": {"strategy": "postcopy"}}))
        for name in STORAGE_CASES:
            cases.append(FaultCase(f"link/storage-{name}/storage/{seconds}s",
                                   _outage("storage", seconds), _disk_copy(name)))
    for mode in ("l2-extend", "dns-tunnel", "mobile-ip", "route"):
        cases.append(FaultCase(f"link/network-{mode}/switchover/{NETWORK_OUTAGE_S}s",
                               _outage("switchover", NETWORK_OUTAGE_S),
                               {"network": {"mode": mode}}))
    for point in KILL_POINTS:
        cases.append(FaultCase(f"kill-destination/{point}", {"kill_destination": point},
                               _postcopy_if(point)))
    for point in SOURCE_KILL_POINTS:
        cases.append(FaultCase(f"kill-source/{point}", {"kill_source": point},
                               _postcopy_if(point)))
    for qemu in ("source", "destination"):
        for point in SOURCE_KILL_POINTS:
            cases.append(FaultCase(f"hang-{qemu}/{point}/{HANG_S}s",
                                   {"hang": qemu, "hang_phase": point, "hang_s": HANG_S},
                                   _postcopy_if(point)))
    cases.append(FaultCase("kill-controller/storage", {"kill_controller": "storage"},
                           _disk_copy("precopy")))
    for point in SOURCE_KILL_POINTS:
        cases.append(FaultCase(f"kill-controller/{point}", {"kill_controller": point},
                               _postcopy_if(point)))
    if only:
        cases = [c for c in cases if any(c.name.startswith(o) for o in only)]
        if not cases:
            raise ConfigError(f"no fault case starts with {', '.join(only)}", field="case")
    return cases


#: The cases whose crash takes the only complete copy: the VM is lost, and must be said so.
#: The destination dead after it ran (the source is stale); the source dead before B had
#: the whole guest, or while B still borrows its pages (postcopy).
LOSES_THE_VM = frozenset({"kill-destination/after-resume", "kill-destination/postcopy",
                          "kill-source/memory", "kill-source/pre-switchover",
                          "kill-source/switchover", "kill-source/postcopy"})


def expected_end(case: str) -> str:
    """``lost`` (status failed, vm_lost) or ``kept`` (completed or rolled back)."""
    return "lost" if case in LOSES_THE_VM else "kept"


def verdict(entry: Entry, left: list[str], expect: str = "kept") -> dict[str, Any]:
    """What the campaign judges of one run: it ended as the rule says it must (``expect``:
    completed or rolled back, or a lost VM said so where the only complete copy died),
    one copy ran at a time, nothing was lost from the guest's log, the disks match, and
    nothing was left behind."""
    integrity = entry.get("integrity") or {}
    status = entry.get("status")
    vm_lost = bool(entry.get("vm_lost"))
    kept = status in ("completed", "rolled_back") and not vm_lost
    return {
        "status": status, "vm_lost": vm_lost, "expected": expect,
        "as_expected": kept if expect == "kept" else (vm_lost and status == "failed"),
        "both_running_ms": integrity.get("both_running_ms"),
        "log_lost": integrity.get("guest_log_gaps"),
        "log_out_of_order": integrity.get("guest_log_out_of_order"),
        "disk_match": integrity.get("disk_match"),
        "leftovers": left,
    }


def _mismatch(disk_match: bool | None) -> float | None:
    """1 where the disks differed, 0 where they matched, None where not compared."""
    return None if disk_match is None else float(not disk_match)


FIGURES: Figures = {
    **RUN_FIGURES,
    "vm_lost": lambda r: 1.0 if r.get("vm_lost") else 0.0,
    "as_expected": lambda r: 1.0 if field_of(r, "campaign", "as_expected") else 0.0,
    "both_running_ms": lambda r: field_of(r, "integrity", "both_running_ms"),
    "log_gaps": lambda r: field_of(r, "integrity", "guest_log_gaps"),
    "out_of_order": lambda r: field_of(r, "integrity", "guest_log_out_of_order"),
    "disk_mismatch": lambda r: _mismatch(field_of(r, "integrity", "disk_match")),
    "leftovers": lambda r: float(len(field_of(r, "campaign", "leftovers") or [])),
}

#: Each family of cases and what its check says.
FAMILIES = (("link/", "every WAN outage ends completed or rolled back, 0 vm_lost"),
            ("hang-", f"every {HANG_S} s hang ends completed or rolled back, 0 vm_lost"),
            ("kill-", "every crash ends as the rule says: vm_lost only where the only "
                      "complete copy died, and said so"))


def evaluate_checks(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets over every run (each case runs once: its figures are its run)."""
    rows = {row["case"]: row["figures"] for row in summary}

    def cases(prefix: str) -> list[str]:
        return [c for c in rows if c.startswith(prefix)]

    def held(names: list[str], figure: str) -> list[str]:
        return [c for c in names if rows[c][figure]["max"] == 1]

    checks = []
    for prefix, label in FAMILIES:
        names = cases(prefix)
        if names:
            ok = held(names, "as_expected")
            checks.append({"check": label, "ok": len(ok) == len(names),
                           "detail": f"{len(ok)} of {len(names)}; not: "
                                     + (", ".join(sorted(set(names) - set(ok))) or "none")})
    for name, label in (("both_running_ms", "ms with two copies running"),
                        ("log_gaps", "lost log records"),
                        ("out_of_order", "out-of-order log records"),
                        ("disk_mismatch", "disk mismatches"),
                        ("leftovers", "leftovers")):
        values = [f[name]["max"] for f in rows.values() if f[name]["n"]]
        worst = max(values, default=None)
        checks.append({"check": f"0 {label} across the campaign",
                       "ok": None if worst is None else worst == 0,
                       "detail": f"worst run {worst:g}, {len(values)} runs measured"
                                 if worst is not None else "not measured"})
    return checks


async def run_faults_bench(*, cases: Sequence[str] | None = None, out: Path | None = None,
                           build_dir: Path | None = None, ui: Ui | None = None,
                           say: Say | None = None) -> dict[str, Any]:
    """Every case once (a fault campaign is judged run by run); the runner's document,
    kind ``faults``."""
    from ..orchestrator import Orchestrator   # the engine, only once a run is asked for

    planned = plan_cases(cases)
    scenarios = {c.name: parse_scenario(c.scenario()) for c in planned}
    bench = BenchRun("faults", planned, figures=FIGURES, checks=evaluate_checks,
                     settings={"outages_s": list(OUTAGES_S)}, out=out, say=say)

    async def migrate(case: FaultCase, index: int) -> Entry:
        if "kill_controller" in case.fault:
            entry = await controller_killed(case.scenario(), bench.say)
        else:
            record = await Orchestrator(scenarios[case.name], build_dir=build_dir, ui=ui).run()
            entry = json.loads(record.model_dump_json())
        entry["campaign"] = verdict(entry, leftovers(entry.get("run_id") or "?"),
                                    expected_end(case.name))
        c = entry["campaign"]
        bench.say(f"    {entry['status']}{' (VM lost)' if c['vm_lost'] else ''}: outage "
                  f"{field_of(entry, 'network', 'client_outage_ms')} ms, both running "
                  f"{c['both_running_ms']} ms, log gaps {c['log_lost']}, leftovers "
                  f"{len(c['leftovers'])}")
        return entry

    return await bench.run(migrate)


async def controller_killed(scenario: dict[str, Any], say: Say) -> Entry:
    """One ``kill_controller`` case: ``wanmig migrate`` in a child kills itself at the
    point, ``wanmig recover`` ends the run, ``wanmig clean`` removes it.  Both QEMUs'
    run states are sampled every ``SAMPLE_S`` on their observer monitors from the moment
    they exist until after the recovery; the entry says what the recovery did and how
    long both copies were seen running at once (whole samples)."""
    workdir = Path(tempfile.mkdtemp(prefix="wanmig-faults-"))
    path = workdir / f"{scenario['name']}.json"
    path.write_text(json.dumps(scenario))
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(WANMIG), "migrate", "--scenario", str(path), "--json",
        str(workdir / "record.json"), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    sampler = RunSampler(proc.pid)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), CONTROLLER_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        output, _ = await proc.communicate()
    killed_ms = round((time.monotonic() - started) * 1000, 1)
    run_id = sampler.run_dir.name if sampler.run_dir else None
    entry: Entry = {"scenario": scenario, "run_id": run_id, "status": "failed",
                    "controller": {"returncode": proc.returncode, "died_at_ms": killed_ms,
                                   "output_tail": output.decode(errors="replace")[-2000:]}}
    try:
        if proc.returncode != -signal.SIGKILL or run_id is None:
            entry["error"] = (f"the controller did not kill itself (exit {proc.returncode})"
                              if run_id else "the run never registered itself")
            return entry
        rec = await recover(run_id)
        entry.update(status=rec.status, vm_lost=rec.vm_lost, recovery=rec.to_json())
        say(f"    recover: {rec.status}, source {rec.source}, destination "
            f"{rec.destination} ({rec.took_ms:.0f} ms)")
        await asyncio.sleep(1.0)   # the recovered copy keeps running: still sampled
    except WanmigError as exc:
        entry["error"] = f"recover: {exc}"
    finally:
        stop.set()
        await sampling
        clean_leftovers()
        shutil.rmtree(workdir, ignore_errors=True)
    both = sampler.both_running()
    entry["integrity"] = {"both_running_ms": round(both * SAMPLE_S * 1000, 1),
                          "both_running_samples": both, "samples": len(sampler.samples)}
    return entry


@dataclass
class RunSampler:
    """Both QEMUs' run states, ``(monotonic s, name, status)`` every ``SAMPLE_S``, of the
    migration that process ``owner`` runs, from the moment it registers until ``stop``."""

    owner: int
    samples: list[tuple[float, str, str]] = field(default_factory=list)
    run_dir: Path | None = None

    async def run(self, stop: asyncio.Event) -> None:
        monitors: dict[str, QMPClient] = {}
        try:
            while not stop.is_set():
                if self.run_dir is None:
                    found = run_owned_by(self.owner)
                    self.run_dir = found[0] if found else None
                for name in ("vm-a", "vm-b") if self.run_dir else ():
                    status = await _sample_one(self.run_dir, name, monitors)
                    if status is not None:
                        self.samples.append((time.monotonic(), name, status))
                await asyncio.sleep(SAMPLE_S)
        finally:
            for qmp in monitors.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(qmp.disconnect(), 2)

    def both_running(self) -> int:
        """Samples after which the latest status of each QEMU said running."""
        last: dict[str, str] = {}
        both = 0
        for _, name, status in sorted(self.samples):
            last[name] = status
            both += last.get("vm-a") == "running" and last.get("vm-b") == "running"
        return both


async def _sample_one(run_dir: Path, name: str, monitors: dict[str, QMPClient]) -> str | None:
    """One QEMU's run state; "gone" once its monitor was open and went away, None while
    it does not exist yet (or does not answer: a sample is not invented)."""
    qmp = monitors.get(name)
    if qmp is None:
        sock = observer_socket(run_dir, name)
        if not sock.exists():
            return None
        qmp = QMPClient(f"sampler-{name}")
        try:
            await asyncio.wait_for(qmp.connect(str(sock)), 2)
        except (OSError, QMPError, asyncio.TimeoutError):
            return None
        monitors[name] = qmp
    try:
        return str((await asyncio.wait_for(qmp.execute("query-status"), 1))["status"])
    except asyncio.TimeoutError:
        return None
    except (OSError, QMPError):
        return "gone"
