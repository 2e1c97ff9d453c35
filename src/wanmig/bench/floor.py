"""``wanmig bench floor``: the TCG floor, what pausing and resuming a guest alone costs a client.

A resumed TCG guest needs tens of ms before it answers again (DESIGN.md, limits):
every outage a migration shows includes that, whatever the strategy.  This
calibration measures it on ONE site, with nothing migrating: the sites, the
guest at A and the client's probes are set up exactly as for a run
(``Orchestrator.source_running``), then each cycle is::

    mark (opens the window) ─ lead ─ stop ─ hold P ─ cont ─ settle ─ mark (closes it)

The closing mark's window (``ProbeWindow``) is the largest UDP echo gap since
the opening one: the figure a run reports as ``client_outage_ms``, at the
run's interval.  The guest was really paused from QEMU's STOP event to
its RESUME event, as QEMU stamped them (``paused_ms``; the nominal P is only
what was asked).  A cycle's floor is ``gap_ms - paused_ms``: the reply that
was on its way when the guest stopped (at most one interval plus the RTT), the
vCPUs' pause, and above all the time from RESUME until the guest answers.
The floor is the median of the valid cycles (min, max and every cycle are kept).

A cycle is valid when its gap is the pause's: it spans the middle of the pause.
On a busy machine (two cores, other QEMUs) the guest or the probe can stall
for longer than the pause elsewhere in the window; such a cycle is kept,
marked invalid, and another is run in its place (``cycles`` valid ones are
wanted, at most twice as many are tried).  To place the gap, the probe's clock
is aligned to the controller's (both CLOCK_MONOTONIC) by the mark with the
shorter round trip: ``gap_vs_stop_ms`` is when the gap began relative to
``stop`` being sent (a stall just before the stop shows as negative, and is
in the floor too), ``reply_after_resume_ms`` when it ended relative to the
RESUME event's arrival: the guest's own share.

``FloorResult`` round-trips through JSON (``to_dict``/``from_dict``);
``wanmig bench memory`` runs this first and subtracts the floor from its
outages, and ``run_floor_bench`` writes it alone as a document of kind ``floor``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu.qmp import EventListener

from ..config import Scenario, parse_scenario
from ..errors import ConfigError, QmpTimeout, WanmigError
from ..fileio import atomic_write
from ..orchestrator import Orchestrator
from ..qemu.process import QemuVm
from ..watch import ClientWatch
from .runner import Say, quiet, spread

if TYPE_CHECKING:
    from ..orchestrator import Ui

DEFAULT_CYCLES = 5
DEFAULT_PAUSE_MS = 300.0
PAUSE_RANGE_MS = (50.0, 5000.0)
LEAD_S = 0.3          # echoes before the stop: the gap is the pause's, not the mark's
SETTLE_S = 0.7        # after cont, before the window closes: the first reply is long back
MAX_TRIES_PER_CYCLE = 2  # an invalid cycle is run again, up to this many tries per cycle
EVENT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
RAM_MIB = 512         # wanmig bench memory's guest
PROFILE = "continental"


@dataclass(frozen=True)
class FloorCycle:
    """One stop/cont cycle, in ms."""

    nominal_pause_ms: float
    paused_ms: float                 # QEMU's RESUME timestamp minus its STOP timestamp
    gap_ms: float                    # the client's largest UDP echo gap in the cycle
    floor_ms: float                  # gap_ms - paused_ms
    stop_ms: float                   # how long ``stop`` took to answer
    cont_ms: float                   # how long ``cont`` took to answer
    commands_paused_ms: float        # from stop's answer to cont's: a cross-check
    gap_vs_stop_ms: float | None     # the gap began this long after ``stop`` was sent
    reply_after_resume_ms: float | None  # it ended this long after RESUME arrived
    valid: bool                      # the gap spans the middle of the pause: it is the pause's


def cycle_of(*, nominal_pause_ms: float, stop_ts: float, resume_ts: float, gap_ms: float,
             stop_sent: float, stop_done: float, cont_sent: float, cont_done: float,
             resume_at: float, gap_start_ms: float | None,
             probe_offset_ms: float) -> FloorCycle:
    """One cycle from its raw times (pure): QEMU's event timestamps (``*_ts``, s, QEMU's
    clock), the controller's monotonic times (s; ``resume_at``: RESUME's arrival), the
    probe's gap (ms, its start on the probe's clock) and the probe clock's offset
    (controller ms minus probe ms)."""
    paused = (resume_ts - stop_ts) * 1000
    start = None if gap_start_ms is None else gap_start_ms + probe_offset_ms  # controller ms
    middle = (stop_done + cont_sent) / 2 * 1000
    return FloorCycle(
        nominal_pause_ms=nominal_pause_ms, paused_ms=round(paused, 3), gap_ms=gap_ms,
        floor_ms=round(gap_ms - paused, 3), stop_ms=round((stop_done - stop_sent) * 1000, 3),
        cont_ms=round((cont_done - cont_sent) * 1000, 3),
        commands_paused_ms=round((cont_done - stop_done) * 1000, 3),
        gap_vs_stop_ms=None if start is None else round(start - stop_sent * 1000, 1),
        reply_after_resume_ms=(None if start is None
                               else round(start + gap_ms - resume_at * 1000, 1)),
        valid=start is not None and start <= middle <= start + gap_ms)


@dataclass(frozen=True)
class FloorResult:
    """The calibration: every cycle, and where it ran."""

    cycles: tuple[FloorCycle, ...]   # every one tried, the invalid ones too
    pause_ms: float
    accel: str | None = None
    profile: str | None = None
    ram_mib: int | None = None
    run_id: str | None = None
    seconds: float | None = None

    @property
    def valid(self) -> tuple[FloorCycle, ...]:
        return tuple(c for c in self.cycles if c.valid)

    @property
    def floor(self) -> dict[str, Any]:
        """Median, min, max and n of the valid cycles' floors."""
        return spread(c.floor_ms for c in self.valid)

    @property
    def floor_ms(self) -> float | None:
        """The floor: the valid cycles' median (None without one)."""
        return self.floor["median"]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cycles"] = [dataclasses.asdict(c) for c in self.cycles]
        # derived, for readers of the JSON; from_dict ignores them
        out["floor_ms"] = self.floor_ms
        out["floor"] = self.floor
        out["paused"] = spread(c.paused_ms for c in self.valid)
        out["gap"] = spread(c.gap_ms for c in self.valid)
        out["reply_after_resume"] = spread(c.reply_after_resume_ms for c in self.valid)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FloorResult:
        names = {f.name for f in dataclasses.fields(cls)} - {"cycles"}
        return cls(cycles=tuple(FloorCycle(**c) for c in data["cycles"]),
                   **{k: v for k, v in data.items() if k in names})


def check_floor_options(cycles: int, pause_ms: float, *, field: str = "cycles") -> None:
    """ConfigError unless ``cycles`` is a whole number >= 1 and ``pause_ms`` is in range."""
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise ConfigError(f"must be a whole number of cycles, at least 1 (got {cycles!r})",
                          field=field)
    low, high = PAUSE_RANGE_MS
    if not low <= pause_ms <= high:
        raise ConfigError(f"must be within {low:g}..{high:g} ms (got {pause_ms:g})",
                          field="pause_ms")


def floor_scenario(ram_mib: int, profile: str) -> Scenario:
    """The run whose set-up the calibration borrows: an idle guest, nothing to migrate
    (ConfigError for a bad size or profile)."""
    return parse_scenario({"name": "floor", "vm": {"ram_mib": ram_mib, "workload": "idle"},
                           "wan": {"profile": profile}})


async def _event_ts(events: EventListener, name: str, vm: QemuVm) -> float:
    """The next ``name`` event's timestamp as QEMU stamped it (s, QEMU's clock)."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        try:
            event = await asyncio.wait_for(events.get(), timeout=max(0.0, left))
        except TimeoutError as exc:
            raise QmpTimeout(f"no {name} event within {EVENT_TIMEOUT_S:g} s",
                             vm=vm.name, cause=exc) from exc
        if event["event"] == name:
            ts = event["timestamp"]
            return float(ts["seconds"]) + float(ts["microseconds"]) / 1e6


async def _cycle(index: int, vm: QemuVm, events: EventListener, client: ClientWatch,
                 pause_s: float) -> FloorCycle:
    await client.mark(f"floor-{index}")
    await asyncio.sleep(LEAD_S)
    stop_sent = time.monotonic()
    await vm.execute("stop", timeout=COMMAND_TIMEOUT_S)
    stop_done = time.monotonic()
    stop_ts = await _event_ts(events, "STOP", vm)
    await asyncio.sleep(max(0.0, stop_done + pause_s - time.monotonic()))
    cont_sent = time.monotonic()
    await vm.execute("cont", timeout=COMMAND_TIMEOUT_S)
    cont_done = time.monotonic()
    resume_ts = await _event_ts(events, "RESUME", vm)
    resume_at = await vm.wait_resumed(EVENT_TIMEOUT_S)
    await asyncio.sleep(SETTLE_S)
    window = await client.mark(f"floor-{index}-end")
    offset = client.clock_offset_ms(last=2)   # this cycle's two marks
    assert offset is not None
    return cycle_of(nominal_pause_ms=pause_s * 1000, stop_ts=stop_ts, resume_ts=resume_ts,
                    gap_ms=window.udp_max_gap_ms, stop_sent=stop_sent, stop_done=stop_done,
                    cont_sent=cont_sent, cont_done=cont_done, resume_at=resume_at,
                    gap_start_ms=window.udp_max_gap_start_ms, probe_offset_ms=offset)


async def measure_tcg_floor(*, cycles: int = DEFAULT_CYCLES, pause_ms: float = DEFAULT_PAUSE_MS,
                            ram_mib: int = RAM_MIB, profile: str = PROFILE,
                            build_dir: Path | None = None, ui: Ui | None = None,
                            say: Say | None = None) -> FloorResult:
    """Set up a run's sites, guest and probes, pause and resume the guest for ``pause_ms``
    until ``cycles`` cycles were valid (at most twice as many tries), and tear everything
    down (also on failure or cancellation).

    ConfigError for bad options, before anything starts; the set-up's errors as a run's.
    """
    check_floor_options(cycles, pause_ms)
    say = say or quiet
    orchestrator = Orchestrator(floor_scenario(ram_mib, profile), build_dir=build_dir, ui=ui)
    started = time.monotonic()
    done: list[FloorCycle] = []
    async with orchestrator.source_running() as (ctx, client):
        assert ctx.src is not None
        with ctx.src.qmp.listener(("STOP", "RESUME")) as events:
            for i in range(MAX_TRIES_PER_CYCLE * cycles):
                cycle = await _cycle(i, ctx.src, events, client, pause_ms / 1000)
                done.append(cycle)
                valid = sum(c.valid for c in done)
                say(f"    floor cycle {i + 1}: gap {cycle.gap_ms:.1f} ms - paused "
                    f"{cycle.paused_ms:.1f} ms = {cycle.floor_ms:.1f} ms"
                    + ("" if cycle.valid else
                       f" (not the pause's gap: began {cycle.gap_vs_stop_ms} ms from the stop;"
                       " not counted)"))
                if valid == cycles:
                    break
        run_id = ctx.registry.run_id
    return FloorResult(cycles=tuple(done), pause_ms=pause_ms, accel=orchestrator.accel,
                       profile=profile, ram_mib=ram_mib, run_id=run_id,
                       seconds=round(time.monotonic() - started, 1))


def _write(out: Path, doc: dict[str, Any]) -> None:
    atomic_write(out, (json.dumps(doc, indent=2) + "\n").encode())


async def run_floor_bench(*, out: Path, cycles: int = DEFAULT_CYCLES,
                          pause_ms: float = DEFAULT_PAUSE_MS, ram_mib: int = RAM_MIB,
                          profile: str = PROFILE, build_dir: Path | None = None,
                          ui: Ui | None = None, say: Say | None = None) -> dict[str, Any]:
    """``wanmig bench floor``: the calibration alone, as a document of kind ``floor``
    (``{"kind", "settings", "result"}``, ``result`` None until it is measured).  A path
    that cannot be written fails (ConfigError) before anything starts."""
    check_floor_options(cycles, pause_ms)
    floor_scenario(ram_mib, profile)
    doc: dict[str, Any] = {"kind": "floor", "settings": {"cycles": cycles, "pause_ms": pause_ms,
                                                         "ram_mib": ram_mib, "profile": profile},
                           "result": None}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write(out, doc)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}", field="--json") from exc
    result = await measure_tcg_floor(cycles=cycles, pause_ms=pause_ms, ram_mib=ram_mib,
                                     profile=profile, build_dir=build_dir, ui=ui, say=say)
    doc["result"] = result.to_dict()
    try:
        _write(out, doc)
    except OSError as exc:
        raise WanmigError(f"cannot write {out}: {exc.strerror or exc}", cause=exc) from exc
    return doc
