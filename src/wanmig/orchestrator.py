"""The migration engine: the phases of DESIGN.md, rollback, and the record.

::

    boot source ─> probes on ─> prepare ─> storage ─> memory ─> switchover ─> redirect ─> finish
                                   └──────── any failure here: rollback ────────┘

``prepare`` starts the destination QEMU (``-incoming defer``) in site B and
sets up the migration; ``storage`` is empty in this version (both sites open
the same disk image); ``memory`` iterates precopy until QEMU pauses at
pre-switchover; ``switchover`` lets QEMU send the last delta and waits for the
destination to run; ``redirect`` announces the VM's MAC from site B
(``announce-self``) so the stretched L2 segment learns where it went;
``finish`` stops the source and lets the probes watch the VM settle.

A failure before the destination runs rolls back: the migration is
cancelled, the source resumed, the destination killed, and the record says
``rolled_back``.  After the destination runs it is authoritative; a later
failure is ``failed`` and never restarts the source (no two running copies).
Every run, whatever happens, writes a ``ResultRecord`` and removes every
namespace and process it made.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .config import Scenario
from .errors import MigrationError, QemuError, WanmigError
from .integrity import check_log
from .memory import MigrationProgress, QemuMigration, TlsSettings
from .memory.select import SURVEYED, LinkFacts, select_plan
from .model import Calibration
from .memory.tls import DeploymentCa, MigrationTls, add_tls_creds
from .probe import ClientProbe, ProbeReport
from .qemu.accel import resolve_accel
from .qemu.image import (
    READY_MARKER,
    GuestImage,
    build_image,
    create_data_disk,
    default_build_dir,
    read_integrity_log,
)
from .qemu.process import QemuVm, VmConfig
from .record import (
    IntegrityResult,
    MemoryResult,
    NetworkResult,
    Phase,
    ResultRecord,
    StorageResult,
    VmInfo,
    WanInfo,
)
from .registry import Registry, new_run_id
from .testbed import Testbed
from .testbed.netns import tx_bytes
from .wan import measure
from .workload import WebLoad, WebLoadReport

log = logging.getLogger("wanmig.orchestrator")

#: Strategies that pace QEMU to the link, so the link's goodput is measured first.
TUNED_STRATEGIES = frozenset({"precopy-tuned", "hybrid", "auto"})
#: A plain veth between the sites has no set rate: what one TCP stream got on it here.
UNSHAPED_MBIT = 10_000.0


class Ui(Protocol):
    """What the engine tells the person watching (the CLI renders it with rich)."""

    def step(self, message: str) -> None: ...
    def phase(self, name: str) -> None: ...
    def progress(self, p: MigrationProgress) -> None: ...


class LogUi:
    """A Ui that only logs; used by tests and when no terminal is attached."""

    def step(self, message: str) -> None:
        log.info("%s", message)

    def phase(self, name: str) -> None:
        log.info("phase %s", name)

    def progress(self, p: MigrationProgress) -> None:
        log.debug("migration %s: %d/%d bytes", p.status, p.transferred, p.total)


@dataclass
class _Clock:
    """Phase bookkeeping, in ms since the start of ``prepare``."""

    t0: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    current: tuple[str, float] | None = None

    def now_ms(self) -> float:
        return (time.monotonic() - self.t0) * 1000.0

    def begin(self, name: str) -> None:
        self.end()
        if not self.phases and self.current is None:
            self.t0 = time.monotonic()
        self.current = (name, self.now_ms())

    def end(self) -> None:
        if self.current:
            name, start = self.current
            self.phases.append(Phase(name=name, start_ms=round(start, 3),
                                     end_ms=round(self.now_ms(), 3)))
            self.current = None


class Orchestrator:
    """Runs one scenario end to end and returns its ResultRecord."""

    def __init__(self, scenario: Scenario, *, build_dir: Path | None = None,
                 ui: Ui | None = None) -> None:
        self.scenario = scenario
        self.build_dir = build_dir
        # The deployment's CA lives next to the guest image (generated, never committed).
        self.pki_dir = (build_dir or default_build_dir()) / "pki"
        self.ui: Ui = ui or LogUi()
        self.registry: Registry | None = None
        self.clock = _Clock()
        self.src: QemuVm | None = None
        self.dst: QemuVm | None = None
        self.migration: QemuMigration | None = None
        self._wire0 = 0
        self.wire_bytes: int | None = None  # site A's inter-site link, memory..finish
        self.decision: dict[str, object] | None = None
        self.testbed: Testbed | None = None
        self.mac_at = "a"  # where the bridges send the VM's frames
        self.probe: ClientProbe | None = None
        self.probe_report: ProbeReport | None = None
        self.web: WebLoad | None = None
        self.web_report: WebLoadReport | None = None
        self.accel: str | None = None
        self.boot_ms: float | None = None
        self.new_conn_ms: float | None = None
        self.integrity = IntegrityResult()
        self.wan_info = WanInfo(profile=scenario.wan.profile)
        self.notes: dict[str, object] = {}

    def __repr__(self) -> str:
        return (f"Orchestrator(scenario={self.scenario.name!r}, "
                f"run={self.registry.run_id if self.registry else None}, "
                f"destination_may_run={self._destination_may_run()})")

    def _destination_may_run(self) -> bool:
        """Past the point of no return: the source must never run again.

        A precopy handed over to a live destination, or any postcopy that
        started (the guest's memory is split between the sites).
        """
        return bool(self.migration and not self.migration.source_resumable)

    async def run(self) -> ResultRecord:
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        status, error = "failed", None
        testbed: Testbed | None = None
        try:
            self.ui.step("building guest image (cached when unchanged)")
            image = await asyncio.to_thread(build_image, self.build_dir)
            if self.scenario.vm.accel == "auto":
                self.ui.step("choosing the accelerator (a KVM probe boot runs once, then cached)")
            self.accel = await resolve_accel(self.scenario.vm.accel, image, image.kernel.parent)
            self.registry = Registry(new_run_id())
            wan = self.scenario.wan
            testbed = Testbed(self.registry, wan=wan.link_profile(),
                              client_wan=wan.client_link_profile(), wan_backend=wan.backend)
            self.ui.step(f"building the two sites (run {self.registry.run_id}, "
                         f"WAN {wan.profile})")
            await testbed.up()
            self.testbed = testbed
            self.wan_info = await self._measure_wan(testbed)
            status, error = await self._migrate_in(testbed, image)
        except WanmigError as exc:
            status, error = "failed", str(exc)
        finally:
            cleanup_errors = await self._teardown(testbed)
        if cleanup_errors:
            self.notes["cleanup_error"] = "; ".join(cleanup_errors)
        return self._record(status, error, started)

    async def _measure_wan(self, testbed: Testbed) -> WanInfo:
        """What the link is set to, and the RTT between the sites just measured."""
        desc = testbed.wan.describe() if testbed.wan else {"profile": "none"}
        rtt = await measure.rtt(testbed.site_a.name, testbed.site_b.name,
                                testbed.addr.site_b_ip, rate_hz=100, seconds=1.0)
        client = testbed.client_wan.describe()["profile"] if testbed.client_wan else None
        goodput = None
        if self.scenario.memory.strategy in TUNED_STRATEGIES and rtt.p50_ms is not None:
            # The tuned strategies pace QEMU to the link: measure what one stream gets.
            g = await measure.goodput(testbed.site_a.name, testbed.site_b.name,
                                      testbed.addr.site_b_ip, seconds=2.0,
                                      rate_mbit=desc.get("rate_mbit"), rtt_ms=rtt.p50_ms,
                                      queue_ms=desc.get("queue_ms") or 0.0,
                                      registry=self.registry)
            goodput = g.goodput_mbit
        info = WanInfo(**desc, rtt_measured_ms=rtt.p50_ms, client_profile=client,
                       goodput_mbit=goodput)
        self.ui.step(f"WAN {info.profile}: RTT measured {info.rtt_measured_ms} ms "
                     f"(set {info.rtt_ms}), rate {info.rate_mbit} Mbit/s"
                     + (f", one TCP stream {goodput:.1f} Mbit/s" if goodput else ""))
        return info

    async def _migrate_in(self, testbed: Testbed, image: GuestImage) -> tuple[str, str | None]:
        sc, addr = self.scenario, testbed.addr
        assert self.registry is not None
        disk = self.registry.run_dir / "disk.raw"
        await asyncio.to_thread(create_data_disk, disk, sc.vm.disk_mib)

        def vm_config(site: str) -> VmConfig:
            return VmConfig(name=f"vm-{site}", image=image, disk=disk, ram_mib=sc.vm.ram_mib,
                            mac=addr.vm_mac, tap=addr.tap, ip_cidr=addr.vm_cidr,
                            accel=self.accel or "tcg", netns=testbed.site(site).name,
                            incoming=site == "b",
                            dirty=((sc.vm.dirty_mib, sc.vm.dirty_rate_mbps)
                                   if sc.vm.workload == "dirty" else None))

        self.ui.step(f"booting the guest at site A ({self.accel})")
        self.src = QemuVm(vm_config("a"), self.registry)
        await self.src.start()
        self.boot_ms = round(await self.src.wait_console(READY_MARKER, sc.vm.boot_timeout_s)
                             * 1000, 1)
        self.ui.step(f"guest ready after {self.boot_ms / 1000:.1f} s; starting client probes")
        self.probe = ClientProbe(addr.vm_ip, netns=testbed.client.name,
                                 interval_ms=sc.probe.interval_ms, registry=self.registry)
        await self.probe.start()
        if sc.vm.workload == "web":
            self.ui.step(f"web workload: {sc.vm.web_rps:g} HTTP requests/s from the client")
            self.web = WebLoad(addr.vm_ip, netns=testbed.client.name, rate=sc.vm.web_rps,
                               registry=self.registry)
            await self.web.start()
        await asyncio.sleep(sc.probe.warmup_s)
        try:
            await self._phases(testbed, vm_config("b"))
        except WanmigError as exc:
            if self._destination_may_run():
                if self.dst is not None and self.dst.returncode is not None:
                    self.notes["vm_lost"] = True
                raise  # past the point of no return: never resume the source too
            await self._rollback(exc)
            return "rolled_back", str(exc)
        return "completed", None

    async def _phases(self, testbed: Testbed, dst_cfg: VmConfig) -> None:
        sc, addr = self.scenario, testbed.addr
        assert self.registry and self.src and self.probe
        uri = f"tcp:{addr.site_b_ip}:{addr.migration_port}"

        self._begin("prepare")
        self.dst = QemuVm(dst_cfg, self.registry)
        await self.dst.start()
        tls = await self._install_tls(addr.site_b_ip) if sc.memory.tls else None
        if sc.memory.strategy in SURVEYED:
            self.ui.step(f"{sc.memory.strategy}: measuring the guest (dirty rate, memory)")
        plan, self.decision = await select_plan(
            sc.memory, self.src, ram_bytes=sc.vm.ram_mib * 2**20, link=self._link_facts(),
            accel=self.accel or "tcg", workdir=self.registry.run_dir, tls=tls,
            preempt=await self._has_capability("postcopy-preempt"))
        if self.decision is not None and "chosen" in self.decision:
            self.ui.step(f"auto chose {plan.strategy}: {self.decision.get('reason')}")
        self.migration = QemuMigration(self.src, self.dst, uri, plan,
                                       on_progress=self.ui.progress)
        await self.migration.prepare()

        self._begin("storage")  # shared image: nothing to copy in this version

        if plan.strategy != "precopy":
            # Keep the migration socket's unsent backlog short, so the last delta
            # (or a postcopy page) is not queued behind seconds of earlier data.
            lowat = Calibration().notsent_lowat_bytes  # what the model assumes
            await testbed.site_a.sysctl("net.ipv4.tcp_notsent_lowat", str(lowat))
            self.notes["site_a_tcp_notsent_lowat"] = lowat

        self._begin("memory")
        await self.probe.mark("migration-start")
        self._wire0 = await tx_bytes(testbed.site_a, "isl0")
        await self.migration.iterate(
            sc.memory.timeout_s,
            on_first_progress=self._kill_destination if sc.fault.kill_destination == "memory"
            else None)
        if sc.fault.kill_destination == "pre-switchover":
            await self._kill_destination()

        self._begin("switchover")
        # The guest is stopped at A from here on: while QEMU sends the last bytes,
        # send its frames to B, so the client's requests wait at B's tap while the
        # destination loads (answered the moment it runs) instead of dying at A's
        # stopped tap until an announcement crosses the WAN.  Rollback points them back.
        self.mac_at = "b"
        move = asyncio.ensure_future(testbed.move_vm_mac("b"))
        try:
            await self.migration.switchover()
        finally:
            await move  # settled before any rollback points the frames back
        await self.probe.mark("switchover-done")

        self._begin("redirect")
        await self.dst.execute("announce-self", {"initial": 50, "max": 550, "rounds": 5,
                                                 "step": 100})

        self._begin("finish")
        if sc.fault.kill_destination == "postcopy" and self.migration.postcopy_started:
            await asyncio.sleep(0.5)  # let the guest run at B on borrowed pages a moment
            await self._kill_destination()
        await self.migration.finish(sc.memory.timeout_s)
        self.wire_bytes = await tx_bytes(testbed.site_a, "isl0") - self._wire0
        await self.src.stop()
        self.clock.end()
        # The probes keep watching a while after the move: a late outage (a
        # stale forwarding entry, say) must show up in the client's figures.
        await asyncio.sleep(sc.probe.settle_s)
        self.new_conn_ms = await self.probe.new_connection_ms()
        if self.new_conn_ms is None:
            # QEMU may call a migration complete while the guest it resumed is
            # useless (hung, say): the client's view decides.
            self.notes["guest_unresponsive"] = True
            self.notes["guest_console_tail"] = self.dst.console_tail()
            raise MigrationError("QEMU completed the migration, but the guest does not answer "
                                 "at site B: no new connection after the move")

    async def _install_tls(self, dest_ip: str) -> TlsSettings:
        """Certificates for this migration from the deployment's CA, loaded into both QEMUs."""
        assert self.registry and self.src and self.dst
        ca = await asyncio.to_thread(DeploymentCa.load_or_create, self.pki_dir)
        foreign = self.scenario.fault.destination_cert == "foreign-ca"
        if foreign:
            self.ui.step("fault injection: the destination presents a certificate of another CA")
        material = await asyncio.to_thread(MigrationTls.create, self.registry.run_dir / "tls",
                                           ca, dest_ip, rogue=foreign)
        await add_tls_creds(self.src, material.source_dir, "client")
        await add_tls_creds(self.dst, material.dest_dir, "server")
        return TlsSettings(hostname=material.hostname)

    async def _has_capability(self, name: str) -> bool:
        assert self.src is not None
        caps = await self.src.execute("query-migrate-capabilities")
        return any(c["capability"] == name for c in caps)

    def _link_facts(self) -> LinkFacts:
        """The link as set and as measured, for tuning and for auto's model."""
        w = self.wan_info
        return LinkFacts(rate_bit_s=(w.rate_mbit or UNSHAPED_MBIT) * 1e6,
                         rtt_ms=w.rtt_measured_ms or w.rtt_ms or 0.1, queue_ms=w.queue_ms or 0.0,
                         loss_pct=w.loss_pct,
                         goodput_bit_s=w.goodput_mbit * 1e6 if w.goodput_mbit else None)

    def _begin(self, name: str) -> None:
        self.clock.begin(name)
        self.ui.phase(name)

    async def _kill_destination(self) -> None:
        """Fault injection: the destination QEMU dies before switchover."""
        assert self.dst is not None
        self.ui.step("fault injection: killing the destination QEMU")
        await self.dst.kill()

    async def _rollback(self, cause: WanmigError) -> None:
        """Undo a migration that failed before the destination ran."""
        self.clock.end()
        self.ui.step(f"rolling back: {cause}")
        assert self.src is not None and self.probe is not None
        if self.migration is not None:
            try:
                await self.migration.cancel()
            except QemuError as exc:
                raise MigrationError(f"rollback failed, source not resumed: {exc}") from exc
        elif await self.src.run_state() != "running":
            await self.src.execute("cont")
        if self.mac_at == "b" and self.testbed is not None:
            await self.testbed.move_vm_mac("a")
            self.mac_at = "a"
        if self.dst is not None:
            await self.dst.kill()
        self.notes["source_state_after_rollback"] = await self.src.run_state()
        await self.probe.mark("rolled-back")
        await asyncio.sleep(self.scenario.probe.settle_s)
        self.new_conn_ms = await self.probe.new_connection_ms()

    async def _teardown(self, testbed: Testbed | None) -> list[str]:
        """Stop probes and VMs, read the guest's disk log, remove the sites.

        Every step runs even if an earlier one failed; the failures are returned.
        """
        errors: list[str] = []

        async def attempt(what: str, step: Awaitable[object]) -> None:
            try:
                await step
            except WanmigError as exc:
                log.warning("%s failed: %s", what, exc)
                errors.append(f"{what}: {exc}")

        if self.probe is not None and self.probe_report is None:
            await attempt("probe report", self._stop_probe())
        if self.web is not None and self.web.state.value == "running":
            await attempt("web workload report", self._stop_web())
        for vm in (self.dst, self.src):
            if vm is not None:
                await attempt(f"stopping {vm.name}", vm.stop())
        if self.registry is not None and (self.registry.run_dir / "disk.raw").exists():
            await attempt("integrity check", self._check_integrity(self.registry.run_dir / "disk.raw"))
        if testbed is not None:
            await attempt("removing the testbed", testbed.down())
        if self.registry is not None:
            self.registry.close(keep_run_dir=bool(errors))
        return errors

    async def _stop_web(self) -> None:
        assert self.web is not None
        self.web_report = await self.web.stop()

    async def _stop_probe(self) -> None:
        assert self.probe is not None
        self.probe_report = await self.probe.stop()

    async def _check_integrity(self, disk: Path) -> None:
        report = check_log(await asyncio.to_thread(read_integrity_log, disk))
        self.integrity = IntegrityResult(
            disk_match=None, guest_log_gaps=report.gaps, guest_log_records=report.records,
            guest_log_bad_checksums=report.bad_checksums,
            guest_max_write_gap_ms=report.max_write_gap_ms)

    def _workload(self) -> dict[str, object] | None:
        """The workload's settings and, for ``web``, what the HTTP clients saw."""
        vm = self.scenario.vm
        if vm.workload == "dirty":
            return {"dirty_mib": vm.dirty_mib, "dirty_rate_mbps": vm.dirty_rate_mbps}
        if vm.workload == "web":
            return {"web_rps": vm.web_rps,
                    "report": self.web_report.to_dict() if self.web_report else None}
        return None

    def _record(self, status: str, error: str | None, started: str) -> ResultRecord:
        sc = self.scenario
        probe = self.probe_report
        memory = (self.migration.result() if self.migration
                  else MemoryResult(strategy=sc.memory.strategy, converged=False))
        memory = memory.model_copy(update={"decision": self.decision,
                                           "wire_bytes": self.wire_bytes})
        phases = self.clock.phases
        return ResultRecord(
            status=status, error=error, run_id=self.registry.run_id if self.registry else None,
            started_at=started, scenario=sc.model_dump(),
            wan=self.wan_info,
            vm=VmInfo(ram_mib=sc.vm.ram_mib, disk_mib=sc.vm.disk_mib, workload=sc.vm.workload,
                      accel=self.accel, boot_ms=self.boot_ms, workload_detail=self._workload()),
            memory=memory,
            storage=StorageResult(strategy="none",
                                  note="both sites open the same disk image (shared storage)"),
            network=NetworkResult(
                mode=sc.network.mode,
                client_outage_ms=probe.udp_max_gap_ms if probe else None,
                tcp_survived=probe.tcp_survived if probe else None,
                new_conn_ms=self.new_conn_ms,
                probe=probe.to_dict() if probe else None),
            integrity=self.integrity,
            phases=phases,
            total_ms=phases[-1].end_ms - phases[0].start_ms if phases else 0.0,
            **self.notes,
        )
