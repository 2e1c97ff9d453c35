"""One bandwidth budget for the whole migration: memory and disk share it.

libvirt gives every disk and the memory stream a limit of its own, so an
operator who wants a migration to take at most N Mbit/s of an inter-site link
must divide N by hand, and the limits multiply with the disks.  wanmig has
one rate (``[budget] rate_mbit``, by default the link as measured just
before the move) and hands it to whatever is moving:

* one consumer alone (the disk's bulk copy before memory, the memory copy of a
  shared-storage run, a postcopy stream after B runs) gets all of it;
* the disk and memory together (precopy's background passes, a ready mirror)
  get ``storage_share`` and the rest.

A consumer is a name and a coroutine that applies a rate in bytes/s, or None
where its share is no less than the link's line rate (then nothing needs
capping, and each part keeps its own settings: QEMU's defaults stay QEMU's
defaults): ``migrate-set-parameters max-bandwidth`` for memory (never above
what the memory plan itself set), ``block-job-set-speed`` for a disk copy.
The disk's consumer is started around each block job, not for the whole
copy, so memory is only held back while a disk job really runs.  The rate can change while the run goes on: ``wanmig budget RUN
MBIT`` writes ``<run dir>/budget``, which the budget reads every
``POLL_S``; every change and what each consumer got is in the record
(``budget``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, WanmigError
from .fileio import atomic_write

if TYPE_CHECKING:
    from .config import BudgetSpec
    from .memory.select import LinkFacts

log = logging.getLogger("wanmig.budget")

#: How often the control file is read.
POLL_S = 0.5
CONTROL_FILE = "budget"
#: Below this a migration cannot make progress worth the name (bytes/s).
MIN_RATE = 64 * 1024
#: Grants the record keeps (the first ones; the rest are counted).
MAX_GRANTS = 500

Apply = Callable[[int | None], Awaitable[None]]


def budget_for(spec: BudgetSpec, link: LinkFacts, run_dir: Path,
               t0: float | None = None) -> Budget:
    """The run's budget: the scenario's rate, else the link's line rate; times in the
    record from ``t0`` (the run's clock)."""
    line = link.rate_bit_s / 8
    rate, source = ((spec.rate_mbit * 1e6 / 8, "scenario") if spec.rate_mbit is not None
                    else (line, "the link's rate"))
    return Budget(rate, line_bytes_s=line, storage_share=spec.storage_share, run_dir=run_dir,
                  source=source, t0=t0)


def write_rate(run_dir: Path, rate_mbit: float) -> Path:
    """Set a running migration's budget (what ``wanmig budget`` does)."""
    if not rate_mbit > 0:
        raise ConfigError(f"a budget must be above 0 Mbit/s, not {rate_mbit:g}", field="rate")
    if not run_dir.is_dir():
        raise ConfigError(f"no run directory {run_dir}: is the run still going?", field="run")
    path = run_dir / CONTROL_FILE
    atomic_write(path, f"{rate_mbit:g}\n".encode())
    return path


class Budget:
    """The migration's rate and who has what share of it."""

    def __init__(self, rate_bytes_s: float, *, line_bytes_s: float, storage_share: float,
                 run_dir: Path, source: str, t0: float | None = None) -> None:
        self.rate = max(MIN_RATE, int(rate_bytes_s))
        self.line = line_bytes_s
        self.storage_share = storage_share
        self.control = run_dir / CONTROL_FILE
        self._consumers: dict[str, Apply] = {}
        self._lock = asyncio.Lock()
        self._t0 = time.monotonic() if t0 is None else t0   # the run's clock, if given
        self._mtime: float | None = None
        self.changes: list[dict[str, Any]] = [{"at_ms": self._now_ms(), "rate_mbit": self.mbit,
                                               "by": source}]
        self.grants: list[dict[str, Any]] = []
        self.grants_dropped = 0

    def __repr__(self) -> str:
        return f"Budget({self.mbit:g} Mbit/s, consumers={sorted(self._consumers)})"

    def _now_ms(self) -> float:
        return round((time.monotonic() - self._t0) * 1000, 1)

    @property
    def mbit(self) -> float:
        return round(self.rate * 8 / 1e6, 3)

    def _shares(self) -> dict[str, int]:
        names = set(self._consumers)
        if names == {"memory", "storage"}:
            disk = int(self.rate * self.storage_share)
            return {"storage": disk, "memory": self.rate - disk}
        return {name: self.rate for name in names}

    def _cap(self, rate: int) -> int | None:
        return rate if rate < self.line else None

    def granted(self, name: str) -> int | None:
        """What ``name`` has now, bytes/s (None: no cap)."""
        rate = self._shares().get(name)
        return None if rate is None else self._cap(rate)

    async def _apply(self, skip: str | None = None) -> None:
        """Every consumer's share, applied (but ``skip``'s, which its caller applies);
        one that fails (its job ended meanwhile, its QEMU went) is noted and does not
        stop the others."""
        at = self._now_ms()
        for name, rate in self._shares().items():
            cap = self._cap(rate)
            grant: dict[str, Any] = {"at_ms": at, "consumer": name,
                                     "rate_mbit": round(rate * 8 / 1e6, 3),
                                     "capped": cap is not None}
            try:
                if name != skip:
                    await self._consumers[name](cap)
            except WanmigError as exc:
                grant["error"] = str(exc)
                log.warning("budget: %s's share not applied: %s", name, exc)
            if len(self.grants) < MAX_GRANTS:
                self.grants.append(grant)
            else:   # a long precopy makes a pass after a pass: the record stays bounded
                self.grants_dropped += 1

    async def start(self, name: str, apply: Apply, *, apply_own: bool = True) -> None:
        """``name`` moves data from now on; everyone's share is applied again -- but
        ``name``'s own when not ``apply_own``: its caller creates what moves the data
        with ``granted(name)`` (QEMU's backup job takes its speed at creation: a
        ``block-job-set-speed`` right after it did not slow it down here)."""
        async with self._lock:
            self._consumers[name] = apply
            await self._apply(skip=None if apply_own else name)

    async def stop(self, name: str) -> None:
        """``name`` has stopped moving data; the others get its share."""
        async with self._lock:
            if self._consumers.pop(name, None) is not None and self._consumers:
                await self._apply()

    async def set_rate(self, rate_bytes_s: float, by: str) -> None:
        async with self._lock:
            self.rate = max(MIN_RATE, int(rate_bytes_s))
            self.changes.append({"at_ms": self._now_ms(), "rate_mbit": self.mbit, "by": by})
            log.info("budget now %g Mbit/s (%s)", self.mbit, by)
            await self._apply()

    async def _read_control(self) -> None:
        try:
            st = self.control.stat()
        except FileNotFoundError:
            return
        if st.st_mtime == self._mtime:
            return
        self._mtime = st.st_mtime
        try:
            mbit = float(self.control.read_text().strip())
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.control, exc)
            return
        if mbit > 0:
            await self.set_rate(mbit * 1e6 / 8, by=f"{CONTROL_FILE} file")

    async def watch(self) -> None:
        """Read the control file every ``POLL_S`` until cancelled."""
        while True:
            await self._read_control()
            await asyncio.sleep(POLL_S)

    def record(self) -> dict[str, Any]:
        return {"rate_mbit": self.mbit, "line_mbit": round(self.line * 8 / 1e6, 3),
                "storage_share": self.storage_share,
                "changes": self.changes, "grants": self.grants,
                "grants_dropped": self.grants_dropped}
