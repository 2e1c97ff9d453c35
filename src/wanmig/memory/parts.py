"""The memory strategies as parts: how the guest's RAM crosses the WAN.

Every strategy drives QEMU's own migration stream (``QemuMigration``); they
differ in how they arrive at the ``MigrationPlan`` (``choose_plan``):

* ``precopy``, ``postcopy``, ``hybrid``: the model's settings for that
  strategy, from the link and the target outage only;
* ``precopy-tuned``: surveys the guest first (its throttle start needs the
  dirty rate);
* ``auto``: surveys, predicts every strategy (``wanmig.model.choose``) and
  plans the one predicted best, within half the timeout: under heavy
  throttling the model's rounds were up to 1.5x optimistic here.

The shared life (``QemuMemory``): ``prepare`` loads the TLS certificates
into both QEMUs and sets the plan; ``copy`` iterates until QEMU pauses the
source at pre-switchover; ``switchover`` lets the last bytes go and returns
with the destination loaded and paused (in verify mode, once both copies of
the RAM compared equal: ``memory.verify``); ``finish`` waits for postcopy's last
pages; ``rollback`` cancels the migration and resumes the source (only ever
called by the engine's rule).  The record gets QEMU's figures, the bytes
site A put on the inter-site link, and the plan's decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

from ..context import Part, RunContext
from ..errors import MigrationError
from ..model import Calibration, choose, predict
from ..model.link import QEMU_DEFAULT_MAX_BANDWIDTH
from ..model.switchover import switchover_timeout_s
from ..record import MemoryResult
from ..testbed.netns import tx_bytes
from ..testbed.topology import WAN_IFACE
from .migration import MigrationState, QemuMigration
from .plan import TLS_AUTHZ_ID, TLS_OBJECT_ID, MigrationPlan, TlsSettings, ablate, override
from .select import known_facts, nominal, plan_for, surveyed, targets_for, unsurveyed
from .tls import DeploymentCa, MigrationTls, add_tls_creds
from .verify import VerifyResult, compare_ram

log = logging.getLogger("wanmig.memory")

#: auto plans to finish within this share of the timeout (see the module docstring).
AUTO_HORIZON_SHARE = 0.5
#: Linux's default tcp_wmem maximum: what default precopy may have queued.
DEFAULT_SNDBUF_MAX = 4 * 2**20


class QemuMemory(Part):
    """The life every memory strategy shares (see the module docstring)."""

    kind: ClassVar[str] = "memory"

    def __init__(self) -> None:
        self.migration: QemuMigration | None = None
        self.plan: MigrationPlan | None = None
        self.decision: dict[str, Any] | None = None
        self.wire_bytes: int | None = None
        self._wire0: int | None = None
        self.verification: VerifyResult | None = None
        self._verified_at: float | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(memory {self.name!r}, migration={self.migration!r})"

    async def choose_plan(self, ctx: RunContext, tls: TlsSettings | None,
                          preempt: bool) -> tuple[MigrationPlan, dict[str, Any] | None]:
        """The plan to run and, for surveyed strategies, the decision for the record."""
        m = unsurveyed(self._known(ctx, tls, preempt))
        return plan_for(self.name, m, targets_for(ctx.scenario.memory), tls), None

    def _known(self, ctx: RunContext, tls: TlsSettings | None, preempt: bool) -> dict[str, Any]:
        return known_facts(ram_bytes=ctx.scenario.vm.ram_mib * 2**20, link=ctx.link,
                           accel=ctx.accel, tls=tls is not None, preempt=preempt)

    # -- hooks ----------------------------------------------------------------

    async def prepare(self, ctx: RunContext) -> None:
        assert ctx.src is not None and ctx.dst is not None
        tls = await install_tls(ctx) if ctx.scenario.memory.tls else None
        preempt = await _has_capability(ctx, "postcopy-preempt")
        plan, self.decision = await self.choose_plan(ctx, tls, preempt)
        predicted = (self.decision or {}).get("predicted") or {}
        if predicted.get("total_ms") is not None:
            ctx.memory_predicted_s = predicted["total_ms"] / 1000
        spec = ctx.scenario.memory
        self.plan = override(ablate(plan, spec.ablate), spec.parameters)
        addr = ctx.testbed.addr
        self.migration = QemuMigration(ctx.src, ctx.dst,
                                       f"tcp:{addr.site_b_ip}:{addr.migration_port}", self.plan,
                                       on_progress=ctx.ui.progress)
        await self.migration.prepare()
        if self.bounded_backlog:
            # Keep the migration socket's unsent backlog short, so the last delta
            # (or a postcopy page) is not queued behind seconds of earlier data.
            lowat = Calibration().notsent_lowat_bytes  # what the model assumes
            await ctx.testbed.site_a.sysctl("net.ipv4.tcp_notsent_lowat", str(lowat))
            ctx.notes["site_a_tcp_notsent_lowat"] = lowat

    @property
    def bounded_backlog(self) -> bool:
        """Every plan but QEMU's defaults caps site A's unsent TCP backlog (unless ablated)."""
        return (self.plan is not None and self.plan.strategy != "precopy"
                and "notsent-limit" not in self.plan.ablated)

    async def copy(self, ctx: RunContext) -> None:
        assert self.migration is not None and self.plan is not None and ctx.src is not None
        self._wire0 = await tx_bytes(ctx.testbed.site_a, WAN_IFACE)
        src, planned = ctx.src, self.plan.parameters.get("max-bandwidth")

        async def share(rate: int | None) -> None:
            """The budget's share, never above the plan's own max-bandwidth (QEMU's
            default where the plan set none)."""
            own = planned or QEMU_DEFAULT_MAX_BANDWIDTH
            await src.execute("migrate-set-parameters",
                              {"max-bandwidth": int(min(rate, own) if rate else own)})

        await ctx.budget.start("memory", share)
        try:
            await self.migration.iterate(
                ctx.scenario.memory.timeout_s,
                on_first_progress=lambda: ctx.faults.at("memory-progress"))
        finally:
            await ctx.budget.stop("memory")

    def switchover_timeout_s(self, ctx: RunContext) -> float:
        """The engine's bound on the switchover (``model.switchover_timeout_s``)."""
        link = ctx.link
        queued = Calibration().notsent_lowat_bytes if self.bounded_backlog else DEFAULT_SNDBUF_MAX
        in_flight = int(link.rate_bit_s * link.rtt_ms / 8000)
        return switchover_timeout_s(target_outage_ms=ctx.scenario.memory.target_outage_ms,
                                    rtt_ms=link.rtt_ms, rate_bit_s=link.rate_bit_s,
                                    backlog_bytes=queued + in_flight)

    async def switchover(self, ctx: RunContext) -> None:
        assert self.migration is not None
        bound = self.switchover_timeout_s(ctx)
        ctx.notes["switchover_timeout_s"] = bound
        await self.migration.switchover(bound)
        if ctx.scenario.memory.verify:
            await self._verify(ctx)
            self._verified_at = time.monotonic()

    async def _verify(self, ctx: RunContext) -> None:
        """Verify mode: compare both copies while B waits paused (``memory.verify``);
        a difference is a MigrationError while B has never run."""
        assert self.migration is not None and ctx.src is not None and ctx.dst is not None
        if self.migration.state is not MigrationState.COMPLETED:
            self.verification = VerifyResult(match=None, note=(
                "not compared: postcopy runs B before its memory is complete "
                "(the guest's own check covers it)"))
            return
        src_ram, dst_ram = ctx.src.cfg.ram_file, ctx.dst.cfg.ram_file
        assert src_ram is not None and dst_ram is not None  # verify mode file-backs RAM
        await ctx.faults.at("verify")
        ctx.ui.step("verify: comparing the guest's RAM at A and B page by page")
        result = await asyncio.to_thread(compare_ram, src_ram, dst_ram,
                                         ctx.scenario.vm.ram_mib * 2**20)
        self.verification = result
        if not result.match:
            raise MigrationError(f"memory verify failed: {result.describe()}; "
                                 "B never ran, so the guest stays at A")

    async def finish(self, ctx: RunContext) -> None:
        assert self.migration is not None
        if self.migration.postcopy_started:
            await ctx.faults.at("postcopy")  # B runs on borrowed pages until finish returns
        await self.migration.finish(ctx.scenario.memory.timeout_s)
        await self._count_wire(ctx)

    async def rollback(self, ctx: RunContext) -> None:
        assert ctx.src is not None
        await self._count_wire(ctx)
        if self.migration is not None and self.migration.continued:
            await cut_stream(ctx)
        if self.migration is not None:
            await self.migration.cancel()
        elif await ctx.src.run_state() != "running":
            await ctx.src.execute("cont")

    def borrows_from_source(self) -> bool:
        return (self.migration is not None and self.migration.postcopy_started
                and self.migration.state is not MigrationState.COMPLETED)

    async def _count_wire(self, ctx: RunContext) -> None:
        if self._wire0 is not None and self.wire_bytes is None:
            self.wire_bytes = await tx_bytes(ctx.testbed.site_a, WAN_IFACE) - self._wire0

    def integrity(self) -> dict[str, Any]:
        return self.verification.integrity_fields() if self.verification else {}

    def instants(self) -> dict[str, float]:
        out = dict(self.migration.instants) if self.migration else {}
        if self._verified_at is not None:
            out["verified"] = self._verified_at
        return out

    def record(self) -> dict[str, Any]:
        memory = (self.migration.result() if self.migration
                  else MemoryResult(strategy=self.plan.strategy if self.plan else self.name,
                                    converged=False))
        return memory.model_copy(update={"decision": self.decision,
                                         "wire_bytes": self.wire_bytes}).model_dump()


class Precopy(QemuMemory):
    """QEMU's defaults over one stream: the baseline every benchmark shows."""

    name = "precopy"


class Postcopy(QemuMemory):
    """``postcopy-ram`` at once: the guest runs at B and faults pages over the WAN."""

    name = "postcopy"


class Hybrid(QemuMemory):
    """Precopy until a round no longer shrinks or the budget is spent, then postcopy."""

    name = "hybrid"


class PrecopyTuned(QemuMemory):
    """multifd + zstd, auto-converge from the throttle the survey says it needs."""

    name = "precopy-tuned"

    async def choose_plan(self, ctx: RunContext, tls: TlsSettings | None,
                          preempt: bool) -> tuple[MigrationPlan, dict[str, Any] | None]:
        return await _surveyed_plan(self, ctx, tls, preempt, horizon_share=1.0, auto=False)


class Auto(QemuMemory):
    """Measure the guest and the link, predict every strategy, run the best."""

    name = "auto"

    async def choose_plan(self, ctx: RunContext, tls: TlsSettings | None,
                          preempt: bool) -> tuple[MigrationPlan, dict[str, Any] | None]:
        return await _surveyed_plan(self, ctx, tls, preempt,
                                    horizon_share=AUTO_HORIZON_SHARE, auto=True)


async def _surveyed_plan(part: QemuMemory, ctx: RunContext, tls: TlsSettings | None,
                         preempt: bool, *, horizon_share: float,
                         auto: bool) -> tuple[MigrationPlan, dict[str, Any]]:
    """Survey the guest, then plan ``part``'s strategy (or, ``auto``, the one chosen)."""
    assert ctx.src is not None
    targets = targets_for(ctx.scenario.memory, horizon_share)
    if "survey" in ctx.scenario.memory.ablate:
        m, survey = nominal(ctx.scenario.vm, part._known(ctx, tls, preempt))
    else:
        ctx.ui.step(f"{part.name}: measuring the guest (dirty rate, memory)")
        m, survey = await surveyed(ctx.src, part._known(ctx, tls, preempt), ctx.run_dir)
    decision: dict[str, Any] = {"survey": survey, "measurements": m.model_dump(),
                                "targets": targets.model_dump()}
    strategy = part.name
    if auto:
        chosen = choose(m, targets, Calibration())
        strategy = chosen.chosen
        decision.update(chosen.model_dump())
        ctx.ui.step(f"auto chose {strategy}: {chosen.reason}")
    decision["predicted"] = predict(strategy, m, targets, Calibration()).model_dump()
    return plan_for(strategy, m, targets, tls), decision


async def install_tls(ctx: RunContext, channel: str = "tls", *,
                      object_id: str = TLS_OBJECT_ID, authz_id: str = TLS_AUTHZ_ID,
                      server_site: str = "b") -> TlsSettings:
    """Certificates for one channel of this migration (``channel``: their directory in
    the run directory) from the deployment's CA, loaded into both QEMUs as
    ``object_id`` (and the server's ``authz_id``).  The server is B's QEMU, or A's
    (``server_site``) for a channel B opens to A.  The memory stream is the ``tls``
    channel; the storage parts have their own."""
    assert ctx.src is not None and ctx.dst is not None
    addr = ctx.testbed.addr
    server, client = (ctx.dst, ctx.src) if server_site == "b" else (ctx.src, ctx.dst)
    ca = await asyncio.to_thread(DeploymentCa.load_or_create, ctx.pki_dir)
    # the fault is the destination's certificate: only where the destination serves
    foreign = ctx.scenario.fault.destination_cert == "foreign-ca" and server_site == "b"
    if foreign:
        ctx.ui.step(f"fault injection: the destination presents a certificate of another CA "
                    f"({channel})")
    material = await asyncio.to_thread(
        MigrationTls.create, ctx.run_dir / channel, ca,
        addr.site_b_ip if server_site == "b" else addr.site_a_ip, rogue=foreign,
        source_name=f"wanmig-{'source' if server_site == 'b' else 'destination'}-"
                    f"{ctx.registry.run_id}")
    await add_tls_creds(client, material.source_dir, "client", object_id)
    # tls-authz: this migration's client, not any certificate the CA signed (nor the
    # client certificate of another migration)
    await add_tls_creds(server, material.dest_dir, "server", object_id,
                        client_identity=material.source_identity, authz_id=authz_id)
    return TlsSettings(hostname=material.hostname, object_id=object_id, authz_id=authz_id)


async def cut_stream(ctx: RunContext) -> None:
    """Close site A's migration sockets from the kernel side (``ss -K``).

    After ``migrate-continue`` QEMU's migration thread writes the last bytes
    holding the big QEMU lock; if they are stuck behind a WAN outage, the
    source's monitor does not answer (not even ``migrate_cancel``) until the
    socket moves.  The destination is fenced by then, so the stream has no
    receiver anyway: destroying the sockets makes the write fail at once,
    QEMU marks the migration failed and its monitor answers again.
    """
    addr = ctx.testbed.addr
    await ctx.testbed.site_a.run("ss", "-K", "dst", addr.site_b_ip, "dport", "=",
                                 str(addr.migration_port))


async def _has_capability(ctx: RunContext, name: str) -> bool:
    assert ctx.src is not None
    caps = await ctx.src.execute("query-migrate-capabilities")
    return any(c["capability"] == name for c in caps)
