"""One QEMU-to-QEMU memory migration carried out from a ``MigrationPlan``.

The source runs with ``pause-before-switchover``: when QEMU is ready to stop
the guest for good (precopy converged, or postcopy was asked for) it stops it
and waits in state ``pre-switchover``.  That splits the migration into the
orchestrator's ``memory`` phase (iterate until pre-switchover) and
``switchover`` phase (``migrate-continue``, last delta or device state,
destination resumes), and gives a clean last point for rollback: until then the
source holds the whole authoritative state.

States::

    IDLE ─prepare()─> PREPARED ─iterate()─> PRE_SWITCHOVER ─switchover()─┬─> COMPLETED   (precopy)
                                                                         └─> POSTCOPY ─finish()─> COMPLETED
      any step that fails ──> FAILED;  cancel() ──> CANCELLED (source running again)

``switchover()`` returns when the destination has loaded what it needs and
waits, paused (it runs with ``-S``), for the engine's ``cont``.  Whether the
source may still be resumed is not this object's call: the engine's run
state decides (``wanmig.runstate``).  Postcopy is the one-way door once the
destination runs: the guest's memory is then split between the two sites,
and if the destination dies the guest is lost (``POSTCOPY_LOSS``).

Capabilities persist inside a QEMU process, so every capability QEMU knows is
set explicitly on both sides (off unless the plan wants it).  State changes
arrive as MIGRATION events, so the pause at pre-switchover is not lengthened
by a polling interval; ``query-migrate`` is polled for progress figures and,
in ``hybrid``, to see precopy stall.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import MigrationError, QemuError, QmpTimeout
from ..qemu.process import QemuVm
from ..record import MemoryResult
from .plan import MigrationPlan, StallDetector, near_convergence_bytes

log = logging.getLogger("wanmig.memory")

FAILED_STATES = frozenset({"failed", "cancelled", "cancelling"})

#: What the record says when the destination dies while postcopy runs.
POSTCOPY_LOSS = ("the destination died during postcopy: the guest's memory was split "
                 "between the sites, so it cannot resume at the source either; the VM is lost "
                 "(postcopy's known risk: use a precopy strategy where this is unacceptable)")

#: What the record says when the source dies while the destination still borrows from it.
POSTCOPY_SOURCE_LOSS = ("the source died during postcopy: the pages the destination had not "
                        "yet fetched died with it, so the guest cannot go on at B; the VM is "
                        "lost (postcopy's known risk: use a precopy strategy where this is "
                        "unacceptable)")
#: ``query-migrate`` must answer within this.
POLL_TIMEOUT_S = 10.0

#: Postcopy: no byte sent for this long while pages remain is a stalled link, which the
#: kernel would take minutes to call broken: both sides are paused and recovered.
POSTCOPY_STALL_S = 3.0
#: How long each side may take to reach ``postcopy-paused`` after ``migrate-pause``.
PAUSE_TIMEOUT_S = 10.0
#: A paused postcopy resumes on a new connection to the destination, on this port
#: above the migration's (``migrate-recover`` listens there).
RECOVER_PORT_OFFSET = 1
#: How often a recovering source is looked at (and, paused again, asked to resume).
RECOVER_RETRY_S = 0.5
#: Statuses of a source between ``migrate ... resume`` and ``postcopy-active``.
RECOVERING = frozenset({"postcopy-recover-setup", "postcopy-recover"})


def capability_args(available: Iterable[str], enabled: Iterable[str]) -> list[dict[str, Any]]:
    """Every capability QEMU offers, on only where asked: no state leaks between runs."""
    wanted = set(enabled)
    names = list(available)
    missing = wanted - set(names)
    if missing:
        raise MigrationError(f"QEMU lacks migration capabilities: {', '.join(sorted(missing))}")
    return [{"capability": n, "state": n in wanted} for n in names]


@dataclass(frozen=True)
class MigrationProgress:
    """One ``query-migrate`` sample, for progress display and the record."""

    status: str
    elapsed_ms: float
    transferred: int
    remaining: int
    total: int
    rounds: int
    throttle_pct: int

    @property
    def row(self) -> tuple[float, int, int, int, int]:
        """This sample as a row of ``MemoryResult.trace``."""
        return (round(self.elapsed_ms, 1), self.rounds, self.remaining, self.transferred,
                self.throttle_pct)

    @classmethod
    def from_query(cls, info: dict[str, Any], elapsed_ms: float) -> "MigrationProgress":
        ram = info.get("ram", {})
        return cls(status=str(info.get("status", "none")), elapsed_ms=elapsed_ms,
                   transferred=int(ram.get("transferred", 0)),
                   remaining=int(ram.get("remaining", 0)), total=int(ram.get("total", 0)),
                   rounds=int(ram.get("dirty-sync-count", 0)),
                   throttle_pct=int(info.get("cpu-throttle-percentage", 0)))


class MigrationState(enum.Enum):
    IDLE = "idle"
    PREPARED = "prepared"
    ITERATING = "iterating"
    PRE_SWITCHOVER = "pre-switchover"
    POSTCOPY = "postcopy"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ProgressFn = Callable[[MigrationProgress], None]


class QemuMigration:
    """One migration from ``src`` to ``dst`` following ``plan``."""

    def __init__(self, src: QemuVm, dst: QemuVm, uri: str, plan: MigrationPlan, *,
                 on_progress: ProgressFn | None = None, poll_s: float = 0.25) -> None:
        self.src, self.dst, self.uri, self.plan = src, dst, uri, plan
        self.on_progress = on_progress
        self.poll_s = poll_s
        self.state = MigrationState.IDLE
        self.last_progress: MigrationProgress | None = None
        self.trace: list[tuple[float, int, int, int, int]] = []
        self.final_info: dict[str, Any] | None = None  # query-migrate once completed
        self.last_info: dict[str, Any] = {}             # latest query-migrate seen
        self.postcopy_started = False  # migrate-start-postcopy was sent
        self.continued = False         # migrate-continue was sent: the last bytes may be stuck
        self.postcopy_reason: str | None = None
        #: Postcopy recoveries (a stalled or broken link): each one's start (monotonic s),
        #: how it was noticed, and how long the migration stood paused.
        self.recoveries: list[dict[str, Any]] = []
        #: When the switchover's steps happened (``time.monotonic()`` s): QEMU paused at
        #: pre-switchover, migrate-continue sent, the source completed, B loaded; and
        #: when ``migrate`` was sent (the trace's zero, not a switchover step).
        self.instants: dict[str, float] = {}
        self._t0 = 0.0
        params = plan.parameters
        self._stall = StallDetector(near_bytes=near_convergence_bytes(
            float(params.get("max-bandwidth", 0)), float(params.get("downtime-limit", 0))))

    @property
    def strategy(self) -> str:
        return self.plan.strategy

    def __repr__(self) -> str:
        return (f"QemuMigration({self.strategy}, state={self.state.value}, "
                f"{self.src.name} -> {self.dst.name}, uri={self.uri!r})")

    async def _set_capabilities(self, vm: QemuVm, enabled: Iterable[str]) -> None:
        caps = await vm.execute("query-migrate-capabilities")
        args = capability_args((c["capability"] for c in caps), enabled)
        await vm.execute("migrate-set-capabilities", {"capabilities": args})

    async def prepare(self) -> None:
        """Set capabilities and parameters on both sides; make the destination listen.

        The TLS credential objects (if the plan uses TLS) must already exist.
        """
        await self._set_capabilities(self.dst, self.plan.dest_capabilities)
        if self.plan.dest_parameters:
            await self.dst.execute("migrate-set-parameters", dict(self.plan.dest_parameters))
        await self._set_capabilities(self.src, self.plan.capabilities)
        if self.plan.parameters:
            await self.src.execute("migrate-set-parameters", dict(self.plan.parameters))
        await self.dst.execute("migrate-incoming", {"uri": self.uri})
        self.state = MigrationState.PREPARED

    async def iterate(self, timeout: float,
                      on_first_progress: Callable[[], Any] | None = None) -> None:
        """Start the migration and return once QEMU pauses at pre-switchover."""
        if self.state is not MigrationState.PREPARED:
            raise MigrationError(f"iterate() in state {self.state.value}")
        deadline = time.monotonic() + timeout
        with self.src.qmp.listener("MIGRATION") as events:
            self._t0 = self.instants["migrate"] = time.monotonic()
            await self.src.execute("migrate", {"uri": self.uri})
            self.state = MigrationState.ITERATING
            first = True
            while True:
                if time.monotonic() > deadline:
                    self.state = MigrationState.FAILED
                    raise MigrationError(f"{self.strategy} did not converge within "
                                         f"{timeout:.0f}s")
                try:
                    event = await asyncio.wait_for(events.get(), timeout=self.poll_s)
                    status = event["data"]["status"]
                except asyncio.TimeoutError:
                    progress = await self._poll()
                    status = progress.status
                    if first and progress.transferred > 0 and on_first_progress:
                        first = False
                        await on_first_progress()
                    await self._maybe_start_postcopy(progress)
                if status == "pre-switchover":
                    self.instants["pre_switchover"] = time.monotonic()
                    self.state = MigrationState.PRE_SWITCHOVER
                    return
                if status in FAILED_STATES:
                    self.state = MigrationState.FAILED
                    raise MigrationError(f"migration {status}: {await self._error_desc()}")

    async def _maybe_start_postcopy(self, p: MigrationProgress) -> None:
        """Ask QEMU for postcopy when the plan's trigger fires (once)."""
        if self.postcopy_started or p.status != "active":
            return
        reason = None
        if self.plan.postcopy == "immediate":
            reason = "postcopy from the start"
        elif self.plan.postcopy == "on-stall":
            budget = self.plan.postcopy_budget_s
            if self._stall.feed(p.rounds, p.remaining):
                reason = (f"precopy stalled in round {p.rounds}: "
                          f"{p.remaining / 2**20:.1f} MiB still dirty")
            elif budget is not None and p.elapsed_ms >= budget * 1000:
                reason = f"precopy budget of {budget:.0f} s spent"
        if reason:
            log.info("starting postcopy: %s", reason)
            await self.src.execute("migrate-start-postcopy")
            self.postcopy_started = True
            self.postcopy_reason = reason

    async def switchover(self, timeout: float) -> None:
        """Let QEMU send the last delta (or the device state); return once the
        destination has loaded it and waits, paused, for ``cont``.

        The destination runs with ``-S``, so it does not run on its own: a
        switchover that fails or times out here leaves a destination that has
        never run, and the engine may fence it and resume the source.
        ``timeout`` is the engine's switchover bound (``model.switchover_timeout_s``).
        """
        if self.state is not MigrationState.PRE_SWITCHOVER:
            raise MigrationError(f"switchover() in state {self.state.value}")
        deadline = time.monotonic() + timeout
        done = {"completed"} | ({"postcopy-active"} if self.postcopy_started else set())
        with self.src.qmp.listener("MIGRATION") as events:
            self.continued = True
            self.instants["continue"] = time.monotonic()
            await self.src.execute("migrate-continue", {"state": "pre-switchover"})
            status = await self._wait_status(events, done, deadline, "switchover", timeout)
            self.instants["source_" + status.replace("-", "_")] = time.monotonic()
        await self._wait_destination_loaded(deadline)
        self.instants["destination_loaded"] = time.monotonic()
        if status == "postcopy-active":
            self.state = MigrationState.POSTCOPY
        else:
            self.final_info = await self.src.execute("query-migrate")
            self.state = MigrationState.COMPLETED

    async def finish(self, timeout: float) -> None:
        """Postcopy: wait until the source has sent every page.  Precopy: nothing left.

        A postcopy whose link stalls (no byte sent for ``POSTCOPY_STALL_S`` while pages
        remain) or breaks (QEMU's ``postcopy-paused``) is recovered without an operator:
        ``migrate-pause`` on both sides where QEMU has not noticed, then
        ``migrate-recover`` at B and ``migrate`` with ``resume`` at A until the link
        carries it again (``_recover``), all within ``timeout``.  Only a destination that
        died, or a migration QEMU calls failed, loses the guest (``POSTCOPY_LOSS``).
        """
        if self.state is MigrationState.COMPLETED:
            return
        if self.state is not MigrationState.POSTCOPY:
            raise MigrationError(f"finish() in state {self.state.value}")
        deadline = time.monotonic() + timeout
        moved_at, sent = time.monotonic(), -1
        with self.src.qmp.listener("MIGRATION") as events:
            while True:
                try:
                    p = await self._poll()
                except QmpTimeout:
                    # a source that does not answer (hung) still holds the pages: B waits
                    # for them, and so do we, within the deadline
                    if self._both_alive() and time.monotonic() < deadline:
                        log.warning("postcopy: the source did not answer query-migrate "
                                    "within %g s; waiting for it", POLL_TIMEOUT_S)
                        continue
                    raise
                except QemuError:
                    if self.src.returncode is None:
                        raise
                    self.state = MigrationState.FAILED
                    raise MigrationError(POSTCOPY_SOURCE_LOSS) from None
                now = time.monotonic()
                if p.status == "completed":
                    break
                if self.dst.returncode is not None or p.status == "failed":
                    self.state = MigrationState.FAILED
                    raise MigrationError(POSTCOPY_LOSS)
                if now > deadline:
                    self.state = MigrationState.FAILED
                    raise MigrationError(f"postcopy did not finish within {timeout:.0f}s")
                if p.transferred != sent:
                    moved_at, sent = now, p.transferred
                stalled = (p.status == "postcopy-active" and p.remaining > 0
                           and now - moved_at >= POSTCOPY_STALL_S)
                if stalled or p.status == "postcopy-paused":
                    try:
                        await self._recover("stalled" if stalled else "broken", deadline)
                    except QmpTimeout as exc:
                        # a side that is alive but does not answer (hung): both still hold
                        # the guest, so recovery is tried again, within the deadline
                        if not self._both_alive() or time.monotonic() >= deadline:
                            raise
                        log.warning("postcopy recovery: %s; trying again", exc)
                    moved_at = time.monotonic()
                    continue
                try:
                    await asyncio.wait_for(events.get(), timeout=self.poll_s)
                except asyncio.TimeoutError:
                    pass
        self.final_info = self.last_info
        self.state = MigrationState.COMPLETED

    @property
    def recover_uri(self) -> str:
        """Where B listens for a resumed postcopy: the migration's address, another port."""
        head, _, port = self.uri.rpartition(":")
        return f"{head}:{int(port) + RECOVER_PORT_OFFSET}"

    async def _status(self, vm: QemuVm) -> str:
        return str((await vm.execute("query-migrate", timeout=5)).get("status", "none"))

    async def _paused(self, vm: QemuVm) -> None:
        """``vm``'s side of the migration in ``postcopy-paused`` (``migrate-pause`` where
        QEMU has not seen the link go: a stalled TCP connection is not an error to it)."""
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        status = await self._status(vm)
        if status == "postcopy-active":
            try:
                await vm.execute("migrate-pause", timeout=5)
            except QmpTimeout:
                raise
            except QemuError as exc:   # it saw the link go between our two questions
                log.info("migrate-pause at %s: %s", vm.name, exc)
        while status != "postcopy-paused":
            if status in FAILED_STATES or time.monotonic() > deadline:
                self.state = MigrationState.FAILED
                raise MigrationError(f"postcopy could not be paused at {vm.name} for "
                                     f"recovery (status {status})")
            await asyncio.sleep(0.05)
            status = await self._status(vm)

    def _both_alive(self) -> bool:
        return self.src.returncode is None and self.dst.returncode is None

    async def _recover(self, how: str, deadline: float) -> None:
        """Pause both sides, make B listen anew, and ask A to resume until it connects
        (the link may still be down: a try that fails leaves A ``postcopy-paused``)."""
        started = time.monotonic()
        log.warning("postcopy %s: pausing both sides and recovering", how)
        await self._paused(self.src)
        await self._paused(self.dst)
        await self.dst.execute("migrate-recover", {"uri": self.recover_uri}, timeout=10)
        tries = 0
        while True:
            status = await self._status(self.src)
            if status in ("postcopy-active", "completed"):
                break
            if status in FAILED_STATES or self.dst.returncode is not None:
                self.state = MigrationState.FAILED
                raise MigrationError(POSTCOPY_LOSS)
            if time.monotonic() > deadline:
                self.state = MigrationState.FAILED
                raise MigrationError(f"postcopy could not be resumed within the timeout "
                                     f"after {tries} tries (the link stayed down)")
            if status == "postcopy-paused":
                tries += 1
                try:
                    await self.src.execute("migrate", {"uri": self.recover_uri,
                                                       "resume": True}, timeout=10)
                except QemuError as exc:   # refused while the link is down: try again
                    log.info("postcopy resume try %d: %s", tries, exc)
            elif status not in RECOVERING:
                log.info("postcopy recovery: source status %s", status)
            await asyncio.sleep(RECOVER_RETRY_S)
        self.recoveries.append({"how": how, "tries": tries,
                                "paused_ms": round((time.monotonic() - started) * 1000, 1)})

    async def _wait_status(self, events: Any, done: set[str], deadline: float,
                           what: str, timeout: float) -> str:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.state = MigrationState.FAILED
                raise MigrationError(f"{what} did not complete within {timeout:.1f} s "
                                     f"(QEMU status {self.last_info.get('status', 'unknown')})")
            try:
                event = await asyncio.wait_for(events.get(), timeout=remaining)
            except asyncio.TimeoutError:
                continue
            status = event["data"]["status"]
            if status in done:
                return status
            if status in FAILED_STATES or status == "postcopy-paused":
                self.state = MigrationState.FAILED
                raise MigrationError(f"{what} {status}: {await self._error_desc()}")

    async def _wait_destination_loaded(self, deadline: float) -> None:
        """Until the destination left ``inmigrate``: loaded and paused (it has ``-S``)."""
        try:
            await self.dst.wait_run_state("paused", passing={"inmigrate"},
                                          timeout=max(0.0, deadline - time.monotonic()))
        except QemuError as exc:
            self.state = MigrationState.FAILED
            raise MigrationError(f"destination did not load the migration: {exc}") from exc

    async def cancel(self) -> None:
        """Stop an unfinished migration and make sure the source guest runs.

        Only the engine's rule (``RunState.may_resume_source``) may call this:
        the destination must have been fenced first.
        """
        try:
            info = await self.src.execute("query-migrate", timeout=5)
            if info.get("status") not in (None, "completed", "failed", "cancelled", "none"):
                await self.src.execute("migrate_cancel", timeout=5)
                await self._wait_source_settled()
            if await self.src.run_state() != "running":
                await self.src.execute("cont", timeout=5)
        finally:
            self.state = MigrationState.CANCELLED

    async def _wait_source_settled(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await self.src.execute("query-migrate", timeout=5)
            if info.get("status") in ("cancelled", "failed", "completed"):
                return
            await asyncio.sleep(0.05)

    def _note(self, info: dict[str, Any]) -> None:
        if "ram" in info:  # a failed migration may report no figures: keep the last ones
            self.last_info = info

    async def _poll(self) -> MigrationProgress:
        info = await self.src.execute("query-migrate", timeout=POLL_TIMEOUT_S)
        self._note(info)
        progress = MigrationProgress.from_query(info, (time.monotonic() - self._t0) * 1000)
        self.last_progress = progress
        self.trace.append(progress.row)
        if self.on_progress:
            self.on_progress(progress)
        return progress

    async def _error_desc(self) -> str:
        """QEMU's reason, or what we can see ourselves when it gives none."""
        try:
            info = await self.src.execute("query-migrate", timeout=5)
            self._note(info)
        except QemuError as exc:
            return str(exc)
        reason = str(info.get("error-desc", "no reason given by QEMU"))
        # A destination that refuses the source (a TLS client certificate it does
        # not trust, say) says why only on its own stderr; the source sees an I/O error.
        dest_said = self.dst.stderr_tail(1)
        if dest_said:
            reason += f" (destination: {dest_said})"
        elif self.dst.returncode is not None:
            reason += f" (the destination QEMU exited, code {self.dst.returncode})"
        return reason

    def result(self) -> MemoryResult:
        """The memory block of the result record (QEMU's own figures).

        For an unfinished migration the figures are those of the last sample
        (bytes sent so far); total and downtime stay empty.
        """
        done = self.final_info is not None
        info = self.final_info or self.last_info
        ram = info.get("ram", {})
        return MemoryResult(
            strategy=self.strategy,
            total_ms=info.get("total-time") if done else None,
            downtime_ms=info.get("downtime") if done else None,
            setup_ms=info.get("setup-time"),
            bytes=ram.get("transferred"),
            rounds=ram.get("dirty-sync-count"),
            pages_per_second=ram.get("pages-per-second"),
            mbps=ram.get("mbps"),
            converged=self.state is MigrationState.COMPLETED,
            postcopy=self.postcopy_started,
            postcopy_reason=self.postcopy_reason,
            postcopy_requests=ram.get("postcopy-requests"),
            postcopy_recoveries=self.recoveries or None,
            multifd_bytes=ram.get("multifd-bytes"),
            # QEMU reports the throttle only while migrating: the last sample's
            cpu_throttle_pct=self.last_info.get("cpu-throttle-percentage"),
            tls=self.plan.tls is not None,
            plan=self.plan.to_dict(),
            trace=self.trace or None,
        )
