"""The engine's handle on one wancopy: a receiver at B, a sender at A.

``WanCopy(ctx, source=..., target=...)`` starts the receiver in B's
namespace (it listens on ``site_b_ip:wancopy_port``) and the sender in A's,
each a ``JsonLinesChild``; ``run()`` waits for the copy, with progress and
the migration's budget (``rate`` commands); ``close()`` counts the bytes on
the still open connections (``ss``, TLS records included) and stops both.
Certificates are this copy's own, from the deployment CA, with the
receiver letting in only this migration's source certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...children import JsonLinesChild, module_argv, owner_of
from ...errors import NetworkError, StorageError
from ...memory.tls import DeploymentCa, MigrationTls
from ...wan.profiles import LinkProfile
from ..jobs import JobStatus, ProgressSteps
from ..nbd import ss_counter
from .endpoint import cert_fingerprint
from .warmstart import MSS, WarmStart, initial_window

if TYPE_CHECKING:
    from ...context import RunContext
    from ...testbed.netns import Namespace

MODULE = "wanmig.storage.wancopy"
START_TIMEOUT_S = 120.0       # the receiver may index a base it has not seen (seconds)
STOP_TIMEOUT_S = 30.0
#: The most streams ``streams_for`` asks for.
MAX_STREAMS = 8
#: Linux's default largest receive buffer (6 MiB), halved.
DEFAULT_WINDOW = 3 * 2**20


def streams_for(link: LinkProfile | None, window_bytes: int) -> int:
    """How many TCP streams fill ``link``: one, unless one stream's rate -- its window
    per round trip, or under loss Mathis et al.'s 1.22 MSS / (RTT sqrt(p)) -- falls
    short of the link's rate."""
    if link is None or link.rate_mbit is None or link.rtt_ms <= 0:
        return 1
    rtt = link.rtt_ms / 1000
    per_stream = window_bytes / rtt
    if link.loss_pct:
        per_stream = min(per_stream, 1.22 * MSS / (rtt * math.sqrt(link.loss_pct / 100)))
    return max(1, min(MAX_STREAMS, math.ceil(link.rate_mbit * 1e6 / 8 / per_stream)))


async def tcp_window(ns: Namespace) -> int:
    """What one stream's receive window may grow to in namespace ``ns`` (B's: each
    namespace has its own ``tcp_rmem``): half the largest receive buffer
    (``tcp_adv_win_scale`` 1)."""
    try:
        return int((await ns.run("cat", "/proc/sys/net/ipv4/tcp_rmem")).split()[2]) // 2
    except (NetworkError, ValueError, IndexError):
        return DEFAULT_WINDOW


@dataclass(frozen=True)
class CopyTls:
    """Both ends' certificate arguments for one copy (empty with ``--insecure``)."""

    send: tuple[str, ...] = ()
    receive: tuple[str, ...] = ()


async def issue_tls(ctx: RunContext) -> CopyTls:
    """Certificates for this migration's wancopies from the deployment CA, made at
    prepare (as QEMU's channels' are), so that issuing them is not part of a copy's
    time; every copy of the run is A to B, so they share them."""
    if not ctx.scenario.memory.tls:
        return CopyTls()
    ca = await asyncio.to_thread(DeploymentCa.load_or_create, ctx.pki_dir)
    foreign = ctx.scenario.fault.destination_cert == "foreign-ca"
    material = await asyncio.to_thread(
        MigrationTls.create, ctx.run_dir / "tls-wancopy", ca, ctx.testbed.addr.site_b_ip,
        rogue=foreign, source_name=f"wanmig-source-{ctx.registry.run_id}-wancopy")
    client_cert = await asyncio.to_thread(cert_fingerprint,
                                          material.source_dir / "client-cert.pem")
    return CopyTls(send=("--tls-dir", str(material.source_dir)),
                   receive=("--tls-dir", str(material.dest_dir), "--client-cert", client_cert))


class WanCopy:
    """One copy of ``source`` (a frozen image at A) into ``target`` (a fresh overlay on
    B's base, at B), over ``tls`` (``issue_tls``)."""

    def __init__(self, ctx: RunContext, *, source: Path, target: Path, base: Path,
                 same_offset: bool, label: str, tls: CopyTls) -> None:
        self.ctx, self.source, self.target, self.base = ctx, source, target, base
        self.same_offset, self.label, self.copy_tls = same_offset, label, tls
        spec = ctx.scenario.storage
        self.streams = spec.streams   # 0: chosen at start (streams_for)
        self.level = spec.compress_level
        self.receiver: JsonLinesChild | None = None
        self.sender: JsonLinesChild | None = None
        self.result: dict[str, Any] = {}
        self.wire_bytes: int | None = None
        self.retransmitted: int | None = None
        self._budgeted = False
        self.warm: WarmStart | None = None

    async def start(self) -> None:
        """Both ends up and connected: B indexed its base and listens, A fetched the index
        over TLS (a foreign certificate fails here, before anything is copied) and
        waits for ``run``.  Nothing of the source is read yet, so a copy can start
        before its source is frozen and leave only the copy itself for later.  Both
        ends are killed if this fails or is cancelled."""
        try:
            await self._start()
        except BaseException:
            await self.kill()
            raise

    async def _start(self) -> None:
        ctx, addr = self.ctx, self.ctx.testbed.addr
        if not self.streams:
            self.streams = streams_for(ctx.scenario.wan.link,
                                       await tcp_window(ctx.testbed.site_b))
        send_tls, recv_tls = self.copy_tls.send, self.copy_tls.receive
        common = ["--address", addr.site_b_ip, "--port", str(addr.wancopy_port),
                  "--session", f"{ctx.registry.run_id}-{self.label}",
                  "--streams", str(self.streams)]
        owner = owner_of(ctx.registry)
        self.receiver = JsonLinesChild(
            module_argv(MODULE, ["receive", *common, *recv_tls, "--target", str(self.target),
                                 "--base", str(self.base)],
                        netns=ctx.testbed.site_b.name, owner=owner),
            name=f"wancopy receiver ({self.label})", error=StorageError,
            registry=ctx.registry)
        await self.receiver.start(START_TIMEOUT_S)
        # each stream's kernel pacing at its share of the line: a stream that never
        # sends faster than the bottleneck drains does not overflow its queue in slow
        # start (unpaced, 14-34 % of the bytes were sent again: bench storage run 8);
        # paced, it may start at its share of the path's BDP (warmstart.py)
        pace = int(ctx.budget.line / self.streams) if ctx.budget.line else 0
        if pace:
            self.warm = WarmStart(ctx.testbed.site_a, addr.site_b_ip, addr.wancopy_port,
                                  initial_window(ctx.budget.line * 8, ctx.link.rtt_ms,
                                                 self.streams))
            await self.warm.add()
        self.sender = JsonLinesChild(
            module_argv(MODULE, ["send", *common, *send_tls, "--source", str(self.source),
                                 "--level", str(self.level), "--pace", str(pace), "--wait-go",
                                 *([] if self.same_offset else ["--no-same-offset"])],
                        netns=ctx.testbed.site_a.name, owner=owner),
            name=f"wancopy sender ({self.label})", error=StorageError, registry=ctx.registry)
        info = await self.sender.start(START_TIMEOUT_S)
        ctx.ui.step(f"wancopy ({self.label}): connected, {self.streams} stream(s), zstd "
                    f"level {self.level}, B's base indexed ({info['index_blocks']} blocks)"
                    f"{'' if self.copy_tls.send else ', without TLS'}")

    async def _set_rate(self, rate: int | None) -> None:
        if self.sender is not None and self.sender.returncode is None:
            await self.sender.command(f"rate {rate or 0}", "rate", 10.0)

    async def run(self, timeout_s: float,
                  moved: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """The copy, from ``go`` (the source is read from then on) until every stream is
        applied and flushed at B, within the migration's budget; the sender's
        statistics."""
        assert self.sender is not None
        ctx = self.ctx
        await ctx.budget.start("storage", self._set_rate, apply_own=False)
        self._budgeted = True
        await self._set_rate(ctx.budget.granted("storage"))
        going = await self.sender.command("go", "going", timeout_s)
        ctx.ui.step(f"wancopy ({self.label}): {going['total'] / 1e6:.1f} MB to consider")
        say = ProgressSteps(ctx.ui.step, f"wancopy ({self.label})", moved=moved)
        async with asyncio.timeout(timeout_s):
            while True:
                ev = await self.sender.next_event("progress", timeout_s)
                if ev.get("final"):
                    self.result = {k: v for k, v in ev.items()
                                   if k not in ("event", "final", "done", "total", "sent")}
                    return self.result
                await say(JobStatus("running", int(ev["done"]), int(ev["total"]), None))

    async def close(self) -> None:
        """Count what crossed (A's payload to B and B's back, while the connections are
        open; never less than what the sender wrote), then stop both ends."""
        ctx, addr = self.ctx, self.ctx.testbed.addr
        if self.sender is not None and self.sender.returncode is None and self.result:
            port = str(addr.wancopy_port)
            a_sel = ("dst", addr.site_b_ip, "dport", "=", port)
            a_to_b = await ss_counter(ctx.testbed, a_sel)
            b_to_a = await ss_counter(ctx.testbed, ("sport", "=", port), site="b")
            self.retransmitted = await ss_counter(ctx.testbed, a_sel, "bytes_retrans")
            self.wire_bytes = max(a_to_b + b_to_a, int(self.result.get("frame_bytes", 0)))
            await self.sender.finish("stopped", STOP_TIMEOUT_S)
        if self.receiver is not None and self.receiver.returncode is None:
            with contextlib.suppress(StorageError):
                await self.receiver.finish("stopped", STOP_TIMEOUT_S)
        await self.kill()

    async def kill(self) -> None:
        for child in (self.sender, self.receiver):
            if child is not None:
                await child.kill()
        if self._budgeted:
            self._budgeted = False
            await self.ctx.budget.stop("storage")
        if self.warm is not None:
            await self.warm.remove()

    def summary(self) -> dict[str, Any]:
        """The record's view: what was skipped and why, the compression, the streams."""
        r = self.result
        data, wire = r.get("data_bytes", 0), r.get("data_wire_bytes", 0)
        return {"streams": self.streams, "compress_level": self.level,
                "initcwnd": self.warm.segments if self.warm else None,
                "wire_bytes": self.wire_bytes, "frame_bytes": r.get("frame_bytes"),
                "retransmitted_bytes": self.retransmitted, "elapsed_s": r.get("elapsed_s"),
                "image_bytes": r.get("total_bytes"), "data_bytes": data,
                "data_wire_bytes": wire, "zero_bytes": r.get("zero_bytes"),
                "zero_found_bytes": r.get("zero_found_bytes", 0),
                "dedup_bytes": sum(r.get(k, 0) for k in ("same_bytes", "ref_base_bytes",
                                                         "ref_stream_bytes")),
                "same_bytes": r.get("same_bytes"), "ref_base_bytes": r.get("ref_base_bytes"),
                "ref_stream_bytes": r.get("ref_stream_bytes"),
                "compress_ratio": round(data / wire, 3) if wire else None,
                "reconnects": r.get("reconnects"), "resent_frames": r.get("resent_frames")}
