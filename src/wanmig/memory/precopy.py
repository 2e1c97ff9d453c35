"""Precopy live migration of one QEMU to another, with the switchover held.

The source runs with ``pause-before-switchover``: when QEMU's precopy has
converged it stops the guest and waits in state ``pre-switchover``.  That
splits the migration into the orchestrator's ``memory`` phase (iterate until
pre-switchover) and ``switchover`` phase (``migrate-continue``, last delta,
destination resumes), and gives a clean last point for rollback: until the
destination reports RESUME the source holds the authoritative state.

States::

    IDLE ─prepare()─> PREPARED ─iterate()─> PRE_SWITCHOVER ─switchover()─> COMPLETED
      any step that fails ──> FAILED;  cancel() ──> CANCELLED (source running again)

Capabilities persist inside a QEMU process, so every capability QEMU knows is
set explicitly on both sides (off unless this strategy wants it).  State
changes arrive as MIGRATION events, so the pause at pre-switchover is not
lengthened by a polling interval; ``query-migrate`` is polled only for
progress figures.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import MigrationError, QemuError
from ..qemu.process import QemuVm
from ..record import MemoryResult

log = logging.getLogger("wanmig.memory")

PRECOPY_CAPABILITIES = frozenset({"events", "pause-before-switchover"})
DEST_CAPABILITIES = frozenset({"events"})
FAILED_STATES = frozenset({"failed", "cancelled", "cancelling"})


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
    mbps: float
    rounds: int
    dirty_pages_rate: int

    @classmethod
    def from_query(cls, info: dict[str, Any], elapsed_ms: float) -> "MigrationProgress":
        ram = info.get("ram", {})
        return cls(status=str(info.get("status", "none")), elapsed_ms=elapsed_ms,
                   transferred=int(ram.get("transferred", 0)),
                   remaining=int(ram.get("remaining", 0)), total=int(ram.get("total", 0)),
                   mbps=float(ram.get("mbps", 0.0)), rounds=int(ram.get("dirty-sync-count", 0)),
                   dirty_pages_rate=int(ram.get("dirty-pages-rate", 0)))


class MigrationState(enum.Enum):
    IDLE = "idle"
    PREPARED = "prepared"
    ITERATING = "iterating"
    PRE_SWITCHOVER = "pre-switchover"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ProgressFn = Callable[[MigrationProgress], None]


class PrecopyMigration:
    """QEMU's precopy with default parameters (the baseline strategy)."""

    strategy = "precopy"

    def __init__(self, src: QemuVm, dst: QemuVm, uri: str, *,
                 on_progress: ProgressFn | None = None, poll_s: float = 0.25) -> None:
        self.src, self.dst, self.uri = src, dst, uri
        self.on_progress = on_progress
        self.poll_s = poll_s
        self.state = MigrationState.IDLE
        self.last_progress: MigrationProgress | None = None
        self.final_info: dict[str, Any] | None = None  # query-migrate once completed
        self.last_info: dict[str, Any] = {}             # latest query-migrate seen
        self.handed_over = False  # QEMU reported "completed": the destination may run
        self._t0 = 0.0

    def __repr__(self) -> str:
        return (f"PrecopyMigration(state={self.state.value}, {self.src.name} -> "
                f"{self.dst.name}, uri={self.uri!r})")

    async def _set_capabilities(self, vm: QemuVm, enabled: Iterable[str]) -> None:
        caps = await vm.execute("query-migrate-capabilities")
        args = capability_args((c["capability"] for c in caps), enabled)
        await vm.execute("migrate-set-capabilities", {"capabilities": args})

    async def prepare(self) -> None:
        """Set capabilities on both sides and make the destination listen."""
        await self._set_capabilities(self.dst, DEST_CAPABILITIES)
        await self._set_capabilities(self.src, PRECOPY_CAPABILITIES)
        await self.dst.execute("migrate-incoming", {"uri": self.uri})
        self.state = MigrationState.PREPARED

    async def iterate(self, timeout: float,
                      on_first_progress: Callable[[], Any] | None = None) -> None:
        """Start the migration and return once QEMU pauses at pre-switchover."""
        if self.state is not MigrationState.PREPARED:
            raise MigrationError(f"iterate() in state {self.state.value}")
        deadline = time.monotonic() + timeout
        with self.src.qmp.listener("MIGRATION") as events:
            self._t0 = time.monotonic()
            await self.src.execute("migrate", {"uri": self.uri})
            self.state = MigrationState.ITERATING
            first = True
            while True:
                if time.monotonic() > deadline:
                    self.state = MigrationState.FAILED
                    raise MigrationError(f"precopy did not converge within {timeout:.0f}s")
                try:
                    event = await asyncio.wait_for(events.get(), timeout=self.poll_s)
                    status = event["data"]["status"]
                except asyncio.TimeoutError:
                    progress = await self._poll()
                    status = progress.status
                    if first and progress.transferred > 0 and on_first_progress:
                        first = False
                        await on_first_progress()
                if status == "pre-switchover":
                    self.state = MigrationState.PRE_SWITCHOVER
                    return
                if status in FAILED_STATES:
                    self.state = MigrationState.FAILED
                    raise MigrationError(f"migration {status}: {await self._error_desc()}")

    async def switchover(self, timeout: float = 60.0) -> None:
        """Let QEMU send the last delta; return once the destination runs."""
        if self.state is not MigrationState.PRE_SWITCHOVER:
            raise MigrationError(f"switchover() in state {self.state.value}")
        deadline = time.monotonic() + timeout
        with self.src.qmp.listener("MIGRATION") as events:
            await self.src.execute("migrate-continue", {"state": "pre-switchover"})
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.state = MigrationState.FAILED
                    raise MigrationError(f"switchover did not complete within {timeout:.0f}s")
                try:
                    event = await asyncio.wait_for(events.get(), timeout=remaining)
                except asyncio.TimeoutError:
                    continue
                status = event["data"]["status"]
                if status == "completed":
                    self.handed_over = True
                    break
                if status in FAILED_STATES:
                    self.state = MigrationState.FAILED
                    raise MigrationError(f"switchover {status}: {await self._error_desc()}")
        await self._wait_destination_running(deadline)
        self.final_info = await self.src.execute("query-migrate")
        self.state = MigrationState.COMPLETED

    async def _wait_destination_running(self, deadline: float) -> None:
        while True:
            try:
                if await self.dst.run_state() == "running":
                    return
            except QemuError as exc:
                self.state = MigrationState.FAILED
                raise MigrationError(f"destination lost at switchover: {exc}") from exc
            if time.monotonic() > deadline:
                self.state = MigrationState.FAILED
                raise MigrationError("destination did not start running after switchover")
            await asyncio.sleep(0.005)

    async def cancel(self) -> None:
        """Stop an unfinished migration and make sure the source guest runs."""
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

    async def _poll(self) -> MigrationProgress:
        info = await self.src.execute("query-migrate", timeout=10)
        self.last_info = info
        progress = MigrationProgress.from_query(info, (time.monotonic() - self._t0) * 1000)
        self.last_progress = progress
        if self.on_progress:
            self.on_progress(progress)
        return progress

    async def _error_desc(self) -> str:
        """QEMU's reason, or what we can see ourselves when it gives none."""
        try:
            info = await self.src.execute("query-migrate", timeout=5)
            if "ram" in info:  # a failed migration may report no figures: keep the last ones
                self.last_info = info
        except QemuError as exc:
            return str(exc)
        if "error-desc" in info:
            return str(info["error-desc"])
        if self.dst.returncode is not None:
            return f"the destination QEMU exited (code {self.dst.returncode})"
        return "no reason given by QEMU"

    def result(self) -> MemoryResult:
        """The memory block of the result record (QEMU's own figures).

        For an unfinished migration the figures are those of the last sample
        (bytes sent so far); total and downtime stay empty.
        """
        info = self.final_info or self.last_info
        ram = info.get("ram", {})
        return MemoryResult(
            strategy=self.strategy,
            total_ms=info.get("total-time") if self.final_info else None,
            downtime_ms=info.get("downtime") if self.final_info else None,
            setup_ms=info.get("setup-time"),
            bytes=ram.get("transferred"),
            rounds=ram.get("dirty-sync-count"),
            pages_per_second=ram.get("pages-per-second"),
            mbps=ram.get("mbps"),
            converged=self.state is MigrationState.COMPLETED,
        )
