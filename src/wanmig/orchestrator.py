"""The migration engine: runs the phases of its parts, keeps the run state, writes the record.

::

    set up (sites, WAN measured, source booted, probes on)
      prepare ─> storage ─> memory ─> switchover ─> [cont B] ─> redirect ─> finish
         └──── any failure, interrupt or timeout before [cont B]: fence B, roll back ──┘
                                             after it: finish with B, or failed / vm-lost

A run is three parts (``wanmig.parts``): a memory strategy, a storage
strategy and a network mode.  The engine calls their hooks phase by phase
(``context.py`` has the table) and does nothing a part could do itself; it
owns what no part may decide alone: the run state (``runstate.py``), the
``cont`` that lets the destination run, and the end of every failure.

The one rule, asked at every end: the source is resumed only while
``RunState.may_resume_source()`` holds -- the destination never received
``cont`` and has been fenced (killed and seen dead).  So a failure (or
SIGINT/SIGTERM, or the switchover's bound running out) before the
destination is let run rolls back: B fenced, the parts undo their work, the
source runs and answers at A, status ``rolled_back``.  After it the source is
never resumed: the run finishes with B, or ends ``failed`` (``vm_lost`` when
B died: its copy ran and neither may run now).  Every run writes a
``ResultRecord`` and removes every namespace and process it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from .budget import budget_for
from .config import Scenario
from .context import Part, PhaseClock, RunContext, StoragePart, Ui
from .errors import MigrationError, QmpTimeout, WanmigError
from .faults import Faults
from .integrity import APP_AOF_DIR, MEMCHECK_SWEEP_PREFIX, app_order_fields, check_log, \
    integrity_problems, integrity_result, memcheck_fields, memcheck_from_console
from .memory import MigrationProgress
from .memory.select import link_facts
from .parts import MEMORY, NETWORK, STORAGE
from .probe.stats import MAX_SERIES_ROWS
from .qemu.accel import resolve_accel
from .qemu.binary import qemu_binary
from .qemu.image import READY_MARKER, build_image, default_build_dir
from .qemu.process import QemuVm
from .record import IntegrityResult, MemoryResult, NetworkResult, ResultRecord, RunEvent, \
    StorageResult, VmInfo, WanInfo
from .registry import Registry, new_run_id
from .runstate import RunState, Stage, overlap, running_intervals
from .storage.disk import read_files, read_log
from .testbed import Testbed
from .testbed.sampler import TxSampler
from .testbed.topology import WAN_IFACE
from .watch import ClientWatch

__all__ = ["LogUi", "Orchestrator", "Ui"]

log = logging.getLogger("wanmig.orchestrator")

#: After ``cont`` the destination must report running within this.
RESUME_TIMEOUT_S = 10.0

#: After the client settled, a guest that has not yet written to its disk at B gets this
#: long to do so (its integrity writer writes every 10 ms): one that ran postcopy has made
#: no write while it faulted its pages over the WAN (7.7-8.4 s writer gaps, 192 MiB over
#: continental) and may still be working off what the client sent meanwhile.
FIRST_WRITE_TIMEOUT_S = 10.0
WRITE_POLL_S = 0.2

#: After the client settled, the ``dirty`` guest must finish a sweep of its memory check
#: that started at B within this (a 64 MiB set sweeps in about 1 s).
MEMCHECK_TIMEOUT_S = 15.0


class LogUi:
    """A Ui that only logs; used by tests and when no terminal is attached."""

    def step(self, message: str) -> None:
        log.info("%s", message)

    def phase(self, name: str) -> None:
        log.info("phase %s", name)

    def progress(self, p: MigrationProgress) -> None:
        log.debug("migration %s: %d/%d bytes", p.status, p.transferred, p.total)


async def _together(*steps: Awaitable[None]) -> None:
    """Run ``steps`` concurrently; every one ends before the first failure is raised."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


#: Instants of the parts that are not steps of the switchover (``_timeline``).
NOT_SWITCHOVER_STEPS = frozenset({"migrate"})


class Orchestrator:
    """Runs one scenario end to end and returns its ResultRecord."""

    def __init__(self, scenario: Scenario, *, build_dir: Path | None = None,
                 ui: Ui | None = None) -> None:
        self.scenario = scenario
        self.build_dir = build_dir
        self.qemu = qemu_binary()  # ConfigError for a QEMU below 10.0, before anything starts
        # The deployment's CA lives next to the guest image (generated, never committed).
        self.pki_dir = (build_dir or default_build_dir()) / "pki"
        self.ui: Ui = ui or LogUi()
        self.state = RunState()
        self.memory: Part = MEMORY.create(scenario.memory.strategy)
        self.storage: StoragePart = STORAGE.create(scenario.storage.strategy)
        self.network: Part = NETWORK.create(scenario.network.mode)
        self.clock = PhaseClock()
        self.registry: Registry | None = None
        self.testbed: Testbed | None = None
        self.ctx: RunContext | None = None
        self.accel: str | None = None
        self.boot_ms: float | None = None
        self.client: ClientWatch | None = None
        self.integrity = IntegrityResult()
        self.wan_info = WanInfo(profile=scenario.wan.profile, link=scenario.wan.link,
                                client_link=scenario.wan.client_link)
        self.notes: dict[str, Any] = {}
        self.instants: dict[str, float] = {}   # the engine's steps (time.monotonic() s)
        self.interrupted: str | None = None
        self._task: asyncio.Task[Any] | None = None   # cancelled by an interrupt, if allowed
        self.sampler: TxSampler | None = None   # A's uplink through the phases (plots)

    def __repr__(self) -> str:
        return (f"Orchestrator(scenario={self.scenario.name!r}, "
                f"run={self.registry.run_id if self.registry else None}, {self.state!r})")

    @property
    def parts(self) -> tuple[Part, Part, Part]:
        return (self.memory, self.storage, self.network)

    # -- signals --------------------------------------------------------------

    def interrupt(self, signame: str = "SIGINT") -> None:
        """SIGINT/SIGTERM: roll back if the rule still allows it, else finish with B."""
        first = self.interrupted is None
        self.interrupted = self.interrupted or signame
        if self.state.destination_may_have_run:
            self.ui.step(f"{signame}: the destination may have run; finishing the move "
                         f"with it (the source is never resumed)")
            return
        if first and self._task is not None:
            self.ui.step(f"{signame}: rolling back")
            self._task.cancel()

    # -- the run ----------------------------------------------------------------

    @contextlib.contextmanager
    def _signals_routed(self) -> Iterator[None]:
        """While a run lives, SIGINT/SIGTERM go to ``interrupt`` (in the main thread, where
        signals arrive): the CLI, the benches and tests alike, so a run always writes its
        record.

        Plain ``signal.signal`` handlers rather than ``loop.add_signal_handler``: the
        latter routes signals through a wakeup fd that forked helpers (pyroute2 forks
        to create namespaces) inherit, so a signal to such a child read as one to us.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop, me = asyncio.get_running_loop(), os.getpid()

        def on_signal(signum: int, frame: object) -> None:
            if os.getpid() == me:  # not in a forked child that inherited the handler
                loop.call_soon_threadsafe(self.interrupt, signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def run(self) -> ResultRecord:
        with self._signals_routed():
            return await self._run()

    async def _run(self) -> ResultRecord:
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        status, error = "failed", None
        self._task = asyncio.current_task()
        try:
            await self._set_up()
            status, error = await self._migrate()
        except asyncio.CancelledError:
            if self.interrupted is None:
                raise
            # only an interrupt while the rule allows a rollback cancels the run
            self._uncancel()
            status, error = await self._end_before_switch(
                MigrationError(f"interrupted ({self.interrupted})"))
        except WanmigError as exc:
            status, error = "failed", str(exc)
            self._enter_end(Stage.FAILED)
        finally:
            self._task = None  # from here an interrupt is only noted
            cleanup_errors = await self._teardown()
        if cleanup_errors:
            self.notes["cleanup_error"] = "; ".join(cleanup_errors)
        status, error = self._judge_integrity(status, error)
        return self._record(status, error, started)

    @contextlib.asynccontextmanager
    async def source_running(self) -> AsyncIterator[tuple[RunContext, ClientWatch]]:
        """What a run sets up before it moves anything -- the sites, the WAN measured, the
        source booted, the client's probes on -- for a caller that measures the guest at A
        without migrating it (``bench/floor.py``).  Torn down as a run is, whatever happens
        inside; a teardown that fails raises WanmigError (the body's own error wins).
        No record is written and signals are not routed: an interrupt cancels the body."""
        try:
            await self._set_up()
            assert self.ctx is not None and self.client is not None
            yield self.ctx, self.client
        finally:
            errors = await self._teardown()
        if errors:
            raise WanmigError("cleaning up failed: " + "; ".join(errors))

    def _uncancel(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()

    async def _set_up(self) -> None:
        sc = self.scenario
        self.ui.step("building guest image (cached when unchanged)")
        image = await asyncio.to_thread(build_image, self.build_dir)
        if sc.vm.accel == "auto":
            self.ui.step("choosing the accelerator (a KVM probe boot runs once, then cached)")
        self.accel = await resolve_accel(sc.vm.accel, image, image.kernel.parent)
        self.registry = Registry(new_run_id())
        self.testbed = Testbed(self.registry, wan=sc.wan.link, client_wan=sc.wan.client_link,
                               wan_backend=sc.wan.backend)
        self.ui.step(f"building the two sites (run {self.registry.run_id}, WAN {sc.wan.profile})")
        await self.testbed.up()
        self.wan_info = await self._measure_wan(self.testbed)
        ctx = self.ctx = RunContext(
            scenario=sc, registry=self.registry, testbed=self.testbed, image=image,
            accel=self.accel, ui=self.ui, state=self.state, link=link_facts(self.wan_info),
            pki_dir=self.pki_dir, build_dir=self.build_dir or default_build_dir(),
            notes=self.notes)
        ctx.faults = Faults(ctx)
        ctx.budget = budget_for(sc.budget, ctx.link, self.registry.run_dir, t0=self.state.t0)
        await self.storage.create(ctx)
        for part in self.parts:
            await part.setup(ctx)
        await self._boot_source(ctx)

    async def _measure_wan(self, testbed: Testbed) -> WanInfo:
        """The link as set, and as measured just before the move (paced strategies: also
        one TCP stream's goodput)."""
        rtt, goodput = await testbed.measure_link(
            goodput=MEMORY.has(self.scenario.memory.strategy, "paced"))
        info = self.wan_info.model_copy(update={
            "backend": testbed.wan.backend if testbed.wan else None,
            "rtt_measured_ms": rtt, "goodput_mbit": goodput})
        self.ui.step(f"WAN {info.profile}: RTT measured {info.rtt_measured_ms} ms "
                     f"(set {info.rtt_ms}), rate {info.rate_mbit} Mbit/s"
                     + (f", one TCP stream {goodput:.1f} Mbit/s" if goodput else ""))
        return info

    async def _boot_source(self, ctx: RunContext) -> None:
        sc = self.scenario
        self.ui.step(f"booting the guest at site A ({self.accel})")
        ctx.src = QemuVm(ctx.vm_config("a", self.storage.disk_for("a")), ctx.registry)
        await ctx.src.start()
        self.boot_ms = round(await ctx.src.wait_console(READY_MARKER, sc.vm.boot_timeout_s)
                             * 1000, 1)
        self._enter(Stage.SOURCE_RUNNING)
        self.ui.step(f"guest ready after {self.boot_ms / 1000:.1f} s; starting client probes"
                     + (f" and {sc.vm.web_rps:g} HTTP requests/s ({sc.vm.workload})"
                        if sc.vm.workload in ("web", "app") else ""))
        self.client = ClientWatch(sc, ctx.testbed, ctx.registry,
                                  interval_ms=sc.probe.interval_for(ctx.accel),
                                  by_name=self.network.client_name())
        await self.client.start()

    async def _migrate(self) -> tuple[str, str | None]:
        """The phases, and the end of a failure; an interrupt's cancellation ends in ``run``.
        The budget's control file is read throughout (``wanmig budget``)."""
        assert self.ctx is not None
        self.sampler = TxSampler(self.ctx.testbed.site_a, WAN_IFACE)
        sampling = asyncio.create_task(self.sampler.run())
        watch = asyncio.create_task(self.ctx.budget.watch())
        try:
            await self._phases()
        except WanmigError as exc:
            if self.state.destination_may_have_run:
                return self._end_after_switch(exc)
            return await self._end_before_switch(exc)
        finally:
            watch.cancel()
            self.sampler.stop()   # its last sample: what A sent until now
            for task in (watch, sampling):
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, 5)
        return "completed", None

    async def _phases(self) -> None:
        ctx = self.ctx
        client = self.client
        assert ctx is not None and ctx.src is not None and client is not None
        memory, storage, network = self.parts

        self._begin("prepare")
        self.state.destination_created()  # before it exists: a fence covers a half-started one
        ctx.dst = QemuVm(ctx.vm_config("b", storage.disk_for("b")), ctx.registry)
        await ctx.dst.start()
        for part in (storage, memory, network):
            await part.prepare(ctx)
        self._enter(Stage.DESTINATION_PREPARED)

        self._begin("storage")
        await storage.copy(ctx)

        self._begin("memory")
        self._enter(Stage.COPYING)
        await client.mark("migration-start")
        await memory.copy(ctx)
        self._enter(Stage.SOURCE_PAUSED)
        await ctx.faults.at("pre-switchover")

        self._begin("switchover")
        await ctx.faults.at("switchover")
        # the network part moves the frames while the memory part sends the last bytes;
        # the disk is in sync first (QEMU's completion deactivates the source's disk).
        # The network's step starts first: what reaches A's stopped guest until it has
        # moved is lost with A's QEMU (the record's frames_moved, tunnel_on, ...).
        async def disk_then_memory() -> None:
            await storage.switchover(ctx)
            await memory.switchover(ctx)

        await _together(network.switchover(ctx), disk_then_memory())
        await storage.before_run(ctx)
        # The point of no return: from the next line on the destination may run.
        loaded = self.instants["cont"] = time.monotonic()
        self._enter(Stage.DESTINATION_RUNNING)
        await ctx.dst.execute("cont")
        resumed = self.instants["resume"] = ctx.resumed_at = await ctx.dst.wait_resumed(
            RESUME_TIMEOUT_S)
        # what holding B at -S costs: from loaded to QEMU's RESUME at B
        self.notes["destination_resume_ms"] = round((resumed - loaded) * 1000, 1)
        await client.mark("switchover-done")

        self._begin("redirect")
        await ctx.faults.at("after-resume")
        await network.redirect(ctx)

        self._begin("finish")
        for part in (memory, storage, network):
            await part.finish(ctx)
        await ctx.src.stop()
        self._enter(Stage.SOURCE_STOPPED)
        self.clock.end()
        new_conn_ms = await client.settle()
        # a guest that answers gets time for its first write at B; one that does not, none
        writes = await (ctx.dst.disk_writes() if new_conn_ms is None else self._writes_at(ctx.dst))
        self.integrity = self.integrity.model_copy(update={"destination_disk_writes": writes})
        if new_conn_ms is None:
            # QEMU may call a migration complete while the guest it resumed is
            # useless (hung, say): the client's view decides.
            self.notes["guest_unresponsive"] = True
            self.notes["guest_console_tail"] = ctx.dst.console_tail()
            raise MigrationError("QEMU completed the migration, but the guest does not answer "
                                 "at site B: no new connection after the move")
        if self.scenario.vm.workload == "dirty":
            await self._await_memory_sweep(ctx.dst)

    async def _writes_at(self, dst: QemuVm) -> int:
        """B's disk writes so far; none yet: polled until the first or
        ``FIRST_WRITE_TIMEOUT_S`` (then 0, which the integrity check fails)."""
        started = time.monotonic()
        while not (writes := await dst.disk_writes()):
            if time.monotonic() - started >= FIRST_WRITE_TIMEOUT_S:
                return 0
            await asyncio.sleep(WRITE_POLL_S)
        if time.monotonic() - started > WRITE_POLL_S:   # it had to wait: say how long
            self.notes["first_write_after_settle_ms"] = round(
                (time.monotonic() - started) * 1000, 1)
        return writes

    async def _await_memory_sweep(self, dst: QemuVm) -> None:
        """Until the guest's memory check has verified its whole working set at B: the
        second sweep line in B's console (``integrity.memcheck_from_console``)."""
        try:
            await dst.wait_console_lines(MEMCHECK_SWEEP_PREFIX, 2, MEMCHECK_TIMEOUT_S)
        except QmpTimeout as exc:
            raise MigrationError(f"the guest's memory check finished no whole sweep of its "
                                 f"working set at B within {MEMCHECK_TIMEOUT_S:g} s "
                                 f"(console: {dst.console_path})", cause=exc) from exc

    # -- ends -------------------------------------------------------------------

    async def _end_before_switch(self, cause: WanmigError) -> tuple[str, str | None]:
        """A failure while the destination has never run: fence it, then ask the rule."""
        self.clock.end()
        ctx = self.ctx
        if ctx is not None and ctx.dst is not None:
            await ctx.dst.kill()        # fenced: killed and reaped
        if ctx is None or ctx.dst is None or ctx.dst.returncode is not None:
            self.state.destination_dead()
        if ctx is not None and ctx.src is not None and ctx.src.returncode is not None:
            # the destination never had the whole guest and never ran: nothing to resume
            self._lost("the source died before the destination had the whole guest; the "
                       "destination, which never ran, was fenced: the only complete copy is "
                       "gone and the VM is lost")
            return "failed", f"{cause}; the source QEMU died: the VM is lost"
        if not self.state.may_resume_source():
            # the rule decides, and without a fenced destination it says no
            self._enter_end(Stage.FAILED)
            return "failed", f"{cause}; the destination could not be fenced: source not resumed"
        if ctx is None or ctx.src is None:
            self._enter_end(Stage.ROLLED_BACK)   # interrupted before anything was started
            return "rolled_back", str(cause)
        try:
            await self._rollback(ctx, cause)
        except WanmigError as exc:
            self._enter_end(Stage.FAILED)
            return "failed", f"{cause}; rollback failed, source not resumed: {exc}"
        return "rolled_back", str(cause)

    async def _rollback(self, ctx: RunContext, cause: WanmigError) -> None:
        assert ctx.src is not None and self.client is not None
        self.ui.step(f"rolling back: {cause}")
        # the frames go back to A before the memory part resumes the source there; one
        # part's failure does not keep the next from undoing its own (the source resumes)
        failures: list[WanmigError] = []
        for part in (self.network, self.storage, self.memory):
            try:
                await part.rollback(ctx)
            except WanmigError as exc:
                log.warning("%s rollback failed: %s", part, exc)
                failures.append(exc)
        if failures:
            raise failures[0]
        self._enter_end(Stage.ROLLED_BACK)
        self.notes["source_state_after_rollback"] = await ctx.src.run_state()
        await self.client.mark("rolled-back")
        await self.client.settle()

    def _end_after_switch(self, cause: WanmigError) -> tuple[str, str | None]:
        """Past the point of no return: the source is never resumed."""
        self.clock.end()
        dst = self.ctx.dst if self.ctx else None
        src = self.ctx.src if self.ctx else None
        if dst is None or dst.returncode is not None:
            self._lost("the destination died after it ran; the source holds the guest as it "
                       "was before the switchover and is not resumed (a stale copy): the VM "
                       "is lost")
        elif (src is not None and src.returncode is not None
              and any(part.borrows_from_source() for part in self.parts)):
            self._lost("the source died while the destination still borrowed its state "
                       "from it (postcopy): the guest cannot go on at B, and the destination "
                       "is stopped with the run: the VM is lost")
        else:
            self._enter_end(Stage.FAILED)
        return "failed", str(cause)

    def _lost(self, why: str) -> None:
        self.notes["vm_lost"] = True
        self.notes["lost"] = why
        self._enter_end(Stage.VM_LOST)

    def _integrity(self) -> IntegrityResult:
        """The engine's integrity fields with every part's own, and how long both copies
        ran at once."""
        return self.integrity.model_copy(
            update={**{k: v for part in self.parts for k, v in part.integrity().items()},
                    "both_running_ms": self._both_running_ms()})

    def _both_running_ms(self) -> float | None:
        ctx = self.ctx
        if ctx is None or ctx.src is None or ctx.src.started_at is None:
            return None
        end = time.monotonic()
        spans = [running_intervals(vm.run_events, started=vm.started_at or end,
                                   ended=vm.exited_at or end, running_at_start=vm is ctx.src)
                 for vm in (ctx.src, ctx.dst) if vm is not None]
        return round(overlap(*spans) * 1000, 1) if len(spans) == 2 else 0.0

    def _judge_integrity(self, status: str, error: str | None) -> tuple[str, str | None]:
        """A run whose guest lost, reordered or did not make writes has failed, whatever
        else went right (``integrity.problems``)."""
        problems = integrity_problems(self._integrity(), completed=status == "completed",
                                      memory_checked=self.scenario.vm.workload == "dirty")
        if not problems:
            return status, error
        self._enter_end(Stage.FAILED)
        message = "integrity check failed: " + "; ".join(problems)
        return "failed", f"{error}; {message}" if error else message

    def _begin(self, name: str) -> None:
        self.clock.begin(name)
        self.ui.phase(name)

    def _enter(self, stage: Stage) -> None:
        self.state.enter(stage)
        if self.registry is not None:
            self.registry.note_stage(stage.value)
        log.info("run state %s", stage.value)

    def _enter_end(self, stage: Stage) -> None:
        if not self.state.ended:
            self._enter(stage)

    # -- teardown and record ---------------------------------------------------

    async def _teardown(self) -> list[str]:
        """Stop probes and VMs, read the guest's disk log (and B's memory check), remove
        the sites.

        Every step runs even if an earlier one failed; the failures are returned.
        """
        errors: list[str] = []
        ctx = self.ctx

        async def attempt(what: str, step: Awaitable[object]) -> None:
            try:
                await step
            except WanmigError as exc:
                log.warning("%s failed: %s", what, exc)
                errors.append(f"{what}: {exc}")

        if ctx is not None:
            await attempt("ending the injected faults", ctx.faults.close())
        if self.client is not None:
            await attempt("client reports", self.client.stop())
        for vm in (ctx.dst, ctx.src) if ctx else ():
            if vm is not None:
                await attempt(f"stopping {vm.name}", vm.stop())
        for part in self.parts:
            await attempt(f"closing the {part.kind} part {part.name}", part.close())
        disk = self.storage.log_disk
        if disk is not None and disk.exists():
            await attempt("integrity check", self._check_integrity(disk))
            if self.scenario.vm.workload == "app":
                await attempt("application data check", self._check_app(disk))
            await attempt("disk check", self.storage.check())
        if (ctx is not None and ctx.dst is not None and self.scenario.vm.workload == "dirty"
                and self.state.destination_may_have_run):
            # B's console holds the guest's own memory check (what it printed at B)
            self.integrity = self.integrity.model_copy(
                update=memcheck_fields(memcheck_from_console(ctx.dst.console_lines())))
        if self.testbed is not None:
            await attempt("removing the testbed", self.testbed.down())
        if self.registry is not None:
            self.registry.close(keep_run_dir=bool(errors))
        return errors

    async def _check_integrity(self, disk: Path) -> None:
        report = check_log(await read_log(disk))
        self.integrity = integrity_result(
            report, destination_disk_writes=self.integrity.destination_disk_writes)

    async def _check_app(self, disk: Path) -> None:
        """The application's own data: the orders Redis logged on the disk."""
        files = await read_files(disk, APP_AOF_DIR, ".aof")
        self.integrity = self.integrity.model_copy(
            update=app_order_fields("".join(files.values())))

    def _events(self, vm: QemuVm | None) -> list[RunEvent] | None:
        if vm is None:
            return None
        return [RunEvent(name=name, at_ms=round((at - self.state.t0) * 1000, 1))
                for name, at in vm.run_events]

    def _all_instants(self) -> dict[str, float]:
        instants = {k: v for part in self.parts for k, v in part.instants().items()}
        instants.update(self.instants)
        return instants

    def _source_stop(self) -> float | None:
        """When QEMU stopped the guest at A for the switchover (its last STOP before
        ``migrate-continue``), ``time.monotonic()`` s; None if it never did."""
        ctx = self.ctx
        stops = [at for name, at in (ctx.src.run_events if ctx and ctx.src else ())
                 if name == "STOP"]
        if not stops:
            return None
        before = self._all_instants().get("continue", float("inf"))
        return max((at for at in stops if at <= before), default=stops[0])

    def _switchover(self) -> tuple[float, float] | None:
        stop, resume = self._source_stop(), self.instants.get("resume")
        return None if stop is None or resume is None else (stop, resume)

    def _timeline(self) -> dict[str, float] | None:
        """The record's ``switchover_timeline``: every part's instants and the engine's,
        and the client's largest gap, as ms after the source's STOP."""
        client = self.client
        stop = self._source_stop()
        if stop is None:
            return None
        instants = {name: at for name, at in self._all_instants().items()
                    if name not in NOT_SWITCHOVER_STEPS}
        report = client.probe_report if client else None
        if report is not None and client is not None:
            for name, probe_ms in (("client_gap_start", report.udp_max_gap_start_ms),
                                   ("client_gap_end", report.udp_max_gap_end_ms)):
                at = client.to_monotonic(probe_ms)
                if at is not None:
                    instants[name] = at
        return {name: round((at - stop) * 1000, 1)
                for name, at in sorted(instants.items(), key=lambda kv: kv[1])}

    def _series(self) -> dict[str, Any] | None:
        """The record's ``series``: what the plots need, on the phases' clock."""
        if not self.clock.phases:
            return None
        t0 = self.clock.t0

        def run_ms(at: float) -> float:
            return round((at - t0) * 1000, 1)

        out: dict[str, Any] = self.client.series(run_ms) if self.client else {}
        if self.sampler is not None and self.sampler.samples:
            out["a_uplink_tx"] = [[run_ms(at), sent] for at, sent in self.sampler.samples]
        jobs = self._disk_jobs(run_ms)
        if jobs:
            out["disk_jobs"] = jobs
        instants = self._all_instants()
        if "migrate" in instants:
            out["memory_trace_at_ms"] = run_ms(instants["migrate"])
        marks = {"A stopped": self._source_stop(), "B resumed": self.instants.get("resume")}
        out["marks"] = {name: run_ms(at) for name, at in marks.items() if at is not None}
        report = self.client.probe_report if self.client else None
        if report is not None and self.client is not None:
            gap = [self.client.to_monotonic(report.udp_max_gap_start_ms),
                   self.client.to_monotonic(report.udp_max_gap_end_ms)]
            if None not in gap:
                out["client_outage"] = [run_ms(at) for at in gap if at is not None]
        return out or None

    def _disk_jobs(self, run_ms: Callable[[float], float]) -> dict[str, list[list[float]]]:
        """Each block job's bytes still to copy as the storage parts polled it, by
        ``<site>:<job id>``: ``[ms, remaining]`` rows, at most ``MAX_SERIES_ROWS`` each."""
        out: dict[str, list[list[float]]] = {}
        for site, vm in (("A", self.ctx.src if self.ctx else None),
                         ("B", self.ctx.dst if self.ctx else None)):
            for at, job, done, total in vm.job_progress if vm else ():
                out.setdefault(f"{site}:{job}", []).append([run_ms(at), total - done])
        return {name: rows[::max(1, -(-len(rows) // MAX_SERIES_ROWS))]
                for name, rows in out.items()}

    def _network_result(self) -> NetworkResult:
        """The mode's fields and the client's; where the mode renamed the VM, what the
        client's resolver and its new connections by name saw of it."""
        fields = self.network.record()
        client = self.client
        if client is not None:
            fields.update(client.network_fields(self._switchover()))
            if fields.get("dns_new_address"):
                fields.update(client.renamed(fields["dns_new_address"],
                                             self._all_instants().get("dns_updated"),
                                             self.instants.get("resume")))
        return NetworkResult(**fields)

    def _record(self, status: str, error: str | None, started: str) -> ResultRecord:
        sc, ctx, client = self.scenario, self.ctx, self.client
        if ctx is not None and ctx.faults.fired:
            self.notes["faults"] = ctx.faults.fired
        if self.interrupted:
            self.notes["interrupted"] = self.interrupted
        phases = self.clock.phases
        return ResultRecord(
            status=status, error=error, run_id=self.registry.run_id if self.registry else None,
            started_at=started, scenario=sc.model_dump(), wan=self.wan_info,
            vm=VmInfo(ram_mib=sc.vm.ram_mib, disk_mib=sc.vm.disk_mib, workload=sc.vm.workload,
                      accel=self.accel, qemu_version=self.qemu.banner, boot_ms=self.boot_ms,
                      workload_detail=client.workload_detail() if client else None,
                      source_events=self._events(ctx.src if ctx else None),
                      destination_events=self._events(ctx.dst if ctx else None)),
            memory=MemoryResult.model_validate(self.memory.record()),
            storage=StorageResult.model_validate(self.storage.record()),
            network=self._network_result(),
            integrity=self._integrity(),
            phases=phases,
            total_ms=phases[-1].end_ms - phases[0].start_ms if phases else 0.0,
            states=[RunEvent.model_validate(s) for s in self.state.to_list()],
            switchover_timeline=self._timeline(),
            budget=ctx.budget.record() if ctx is not None else None,
            series=self._series(),
            wan_bytes=self.sampler.sent if self.sampler else None,
            **self.notes,
        )
