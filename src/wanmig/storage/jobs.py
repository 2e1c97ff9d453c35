"""QEMU block jobs, watched by polling ``query-jobs``.

Jobs are started with ``auto-dismiss: false``, so one that ends stays in
``query-jobs`` as ``concluded`` with its ``error`` until ``job-dismiss``:
an end is never mistaken for a success because the job vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import QemuError, StorageError

if TYPE_CHECKING:
    from ..budget import Budget
    from ..qemu.process import QemuVm

POLL_S = 0.2
END_POLL_S = 0.01


@dataclass(frozen=True)
class JobStatus:
    status: str             # QEMU's JobStatus: running, ready, concluded, ...
    done: int               # current-progress (bytes for mirror)
    total: int              # total-progress (grows while the guest writes)
    error: str | None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


async def job_status(vm: QemuVm, job_id: str) -> JobStatus | None:
    """The job's status; None if QEMU has no such job."""
    for job in await vm.execute("query-jobs"):
        if job.get("id") == job_id:
            status = JobStatus(status=job["status"], done=int(job.get("current-progress", 0)),
                               total=int(job.get("total-progress", 0)), error=job.get("error"))
            vm.job_progress.append((time.monotonic(), job_id, status.done, status.total))
            return status
    return None


Progress = Callable[[JobStatus], Awaitable[None]]


async def _until(vm: QemuVm, job_id: str, statuses: tuple[str, ...], timeout_s: float,
                 what: str, on_progress: Progress | None, poll_s: float = POLL_S) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        st = await job_status(vm, job_id)
        if st is None:
            raise StorageError(f"{what}: QEMU has no job {job_id!r}")
        if on_progress is not None:
            await on_progress(st)
        if st.status in statuses:
            return st
        if st.status == "concluded":
            await dismiss(vm, job_id)
            raise StorageError(f"{what} ended before it was {'/'.join(statuses)}: "
                               f"{st.error or 'no error given'}")
        if time.monotonic() >= deadline:
            raise StorageError(f"{what} not {'/'.join(statuses)} after {timeout_s:g} s "
                               f"({st.done / 1e6:.1f} of {st.total / 1e6:.1f} MB)")
        await asyncio.sleep(poll_s)


async def wait_ready(vm: QemuVm, job_id: str, timeout_s: float, *, what: str,
                     on_progress: Progress | None = None) -> JobStatus:
    """Until a mirror job has copied everything once and tracks writes (``ready``)."""
    return await _until(vm, job_id, ("ready",), timeout_s, what, on_progress)


async def wait_concluded(vm: QemuVm, job_id: str, timeout_s: float, *, what: str,
                         on_progress: Progress | None = None) -> JobStatus:
    """Until the job has ended; dismisses it.  StorageError if it ended in an error.
    Polled every ``END_POLL_S`` (an end may be awaited while the guest is paused)."""
    st = await _until(vm, job_id, ("concluded",), timeout_s, what, on_progress, END_POLL_S)
    await dismiss(vm, job_id)
    if st.error:
        raise StorageError(f"{what} failed: {st.error}")
    return st


async def dismiss(vm: QemuVm, job_id: str) -> None:
    await vm.execute("job-dismiss", {"id": job_id})


class ProgressSteps:
    """Tells the person watching how far a copy is, every ``step`` of it, with the rate
    so far and an ETA; ``moved`` is awaited once, when the first bytes have moved."""

    def __init__(self, say: Callable[[str], None], what: str, step: float = 0.1, *,
                 moved: Callable[[], Awaitable[None]] | None = None) -> None:
        self.say, self.what, self.step, self.moved = say, what, step, moved
        self.t0 = time.monotonic()
        self.next = step

    async def __call__(self, st: JobStatus) -> None:
        if self.moved is not None and st.done > 0:
            moved, self.moved = self.moved, None
            await moved()
        if st.total <= 0 or st.fraction < self.next or self.next >= 1.0:
            return  # the end is the caller's to say
        elapsed = time.monotonic() - self.t0
        rate = st.done / elapsed if elapsed > 0 else 0.0
        eta = (st.total - st.done) / rate if rate > 0 else float("inf")
        self.say(f"{self.what}: {st.done / 1e6:.1f} of {st.total / 1e6:.1f} MB "
                 f"({st.fraction:.0%}), {rate * 8 / 1e6:.1f} Mbit/s, ETA {eta:.0f} s")
        while self.next <= st.fraction:
            self.next += self.step


def speed_of(vm: QemuVm, job_id: str) -> Callable[[int | None], Awaitable[None]]:
    """The budget's consumer for a block job: ``block-job-set-speed`` (0, no limit,
    where the disk's share is the whole link)."""
    async def share(rate: int | None) -> None:
        try:
            await vm.execute("block-job-set-speed", {"device": job_id, "speed": rate or 0})
        except QemuError:
            st = await job_status(vm, job_id)
            if st is not None and st.status != "concluded":
                raise
            # it ended (and may be dismissed) while the budget changed: nothing to cap
    return share


async def start_budgeted(budget: Budget, vm: QemuVm, job_id: str) -> int:
    """The disk joins the migration's budget for the block job ``job_id`` about to be
    made: the ``speed`` to create it with (0: no limit); a later change of the budget
    reaches it through ``block-job-set-speed``."""
    await budget.start("storage", speed_of(vm, job_id), apply_own=False)
    return budget.granted("storage") or 0


@contextlib.asynccontextmanager
async def budgeted(budget: Budget, vm: QemuVm, job_id: str) -> AsyncIterator[int]:
    """The disk's share of the migration's budget while the block job ``job_id`` runs;
    yields the ``speed`` to create the job with (``start_budgeted``)."""
    speed = await start_budgeted(budget, vm, job_id)
    try:
        yield speed
    finally:
        await budget.stop("storage")
