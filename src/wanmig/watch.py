"""What the client sees during a run: the probes, and the web load when the workload is ``web``.

Both agents run in the client's namespace (``probe/``, ``workload/``); this
is the engine's one handle on them::

    start()  probes on (every probe answered once), web load on, warm-up
    mark()   a named instant on the probe's clock (migration-start, ...), and
             what the client got since the previous mark (a ``ProbeWindow``: the
             largest UDP gap, echoes sent and answered, their median RTT);
             each mark also reads the probe's clock against the controller's
             (both CLOCK_MONOTONIC): ``to_monotonic()``
    settle() the probes keep watching ``probe.settle_s``, then one new
             connection is opened: ``new_conn_ms`` (None: the guest did not answer)
    stop()   the last window closed ("stop"), both reports read back; idempotent,
             and safe after a failed start

``network_fields()`` and ``workload_detail()`` are the record's share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .children import ChildState
from .config import Scenario
from .probe import ClientProbe, ProbeReport, ProbeWindow
from .registry import Registry
from .testbed import Testbed
from .workload import WebLoad, WebLoadReport
from .workload.spec import APP_PATHS, DEFAULT_PATHS


#: Lost echoes sent this long before the source stopped or after the destination
#: resumed count as the switchover's (``udp_lost_switchover``).
SWITCHOVER_MARGIN_S = 1.0


class ClientWatch:
    def __init__(self, scenario: Scenario, testbed: Testbed, registry: Registry, *,
                 interval_ms: float, by_name: tuple[str, str] | None = None) -> None:
        self.scenario = scenario
        self.interval_ms = interval_ms   # the UDP echo's: the scenario's, or by accelerator
        addr, netns = testbed.addr, testbed.client.name
        self.probe = ClientProbe(addr.vm_ip, netns=netns, interval_ms=interval_ms,
                                 registry=registry, by_name=by_name)
        workload = scenario.vm.workload
        self.web = (WebLoad(addr.vm_ip, netns=netns, rate=scenario.vm.web_rps, registry=registry,
                            paths=APP_PATHS if workload == "app" else DEFAULT_PATHS)
                    if workload in ("web", "app") else None)
        self.probe_report: ProbeReport | None = None
        self.web_report: WebLoadReport | None = None
        self.new_conn_ms: float | None = None
        #: One per mark: (its round trip s, controller ms minus the probe's ms at it).
        self.clock_reads: list[tuple[float, float]] = []
        #: What each mark closed, in order; ``stop()`` closes the last one ("stop").
        self.windows: list[ProbeWindow] = []

    def __repr__(self) -> str:
        return f"ClientWatch(probe={self.probe!r}, web={self.web!r})"

    async def start(self) -> None:
        await self.probe.start()
        if self.web is not None:
            await self.web.start()
        await asyncio.sleep(self.scenario.probe.warmup_s)

    async def mark(self, name: str) -> ProbeWindow:
        """A named instant; returns the window it closes (the largest UDP gap since the
        previous mark)."""
        sent = time.monotonic()
        window = await self.probe.mark_window(name)
        done = time.monotonic()
        self.clock_reads.append((done - sent, (sent + done) / 2 * 1000 - window.t_ms))
        self.windows.append(window)
        return window

    def clock_offset_ms(self, last: int | None = None) -> float | None:
        """Controller ms minus probe ms, read through the mark (of the ``last`` ones, or
        of all) that answered soonest: the closest estimate.  None before any mark."""
        reads = self.clock_reads[-last:] if last else self.clock_reads
        return min(reads)[1] if reads else None

    def to_monotonic(self, probe_ms: float | None) -> float | None:
        """An instant on the probe's clock as ``time.monotonic()`` seconds."""
        offset = self.clock_offset_ms()
        return None if probe_ms is None or offset is None else (probe_ms + offset) / 1000

    async def settle(self) -> float | None:
        """Watch a while (a late outage must show up), then time one new connection."""
        await asyncio.sleep(self.scenario.probe.settle_s)
        self.new_conn_ms = await self.probe.new_connection_ms()
        return self.new_conn_ms

    async def stop(self) -> None:
        """Read both reports back (an agent that is not running is only reaped).  The web
        load is stopped even if the probe's report fails."""
        try:
            if self.probe.state is ChildState.RUNNING:
                await self.mark("stop")
                self.probe_report = await self.probe.stop()
            else:
                await self.probe.kill()
        finally:
            if self.web is not None and self.web.state is ChildState.RUNNING:
                self.web_report = await self.web.stop()
            elif self.web is not None:
                await self.web.kill()

    def network_fields(self, switchover: tuple[float, float] | None = None) -> dict[str, Any]:
        """The client's figures for the record's ``network`` block; ``switchover``: the
        source's stop and the destination's resume (``time.monotonic()`` s), around which
        lost echoes are counted apart."""
        p = self.probe_report
        rtt = {w.name: w.udp_rtt_p50_ms for w in self.windows}
        return {"client_outage_ms": p.udp_max_gap_ms if p else None,
                "tcp_survived": p.tcp_survived if p else None,
                "new_conn_ms": self.new_conn_ms,
                "probe": _without_series(p.to_dict()) if p else None,
                "probe_interval_ms": self.interval_ms,
                "probe_windows": [w.summary() for w in self.windows] or None,
                "rtt_before_ms": rtt.get("migration-start"),
                "rtt_after_ms": rtt.get("stop"),
                "udp_lost": p.udp_lost if p else None,
                "udp_lost_switchover": self._lost_around(switchover),
                "http_failed_1s": p.http_failed_1s if p else None}

    def series(self, run_ms: Callable[[float], float]) -> dict[str, Any]:
        """The probe's series for the record's ``series`` (``udp_rtt``, ``http``), their
        instants moved from the probe's clock by ``run_ms`` (``time.monotonic()`` s to
        the record's ms); empty without a report or a mark to read the clocks by."""
        p, offset = self.probe_report, self.clock_offset_ms()
        if p is None or offset is None:
            return {}
        out: dict[str, Any] = {}
        for name, rows in (("udp_rtt", p.udp_series), ("http", p.http_series)):
            if rows:
                out[name] = [[run_ms((row[0] + offset) / 1000), *row[1:]] for row in rows]
        return out

    def renamed(self, address: str, updated_at: float | None,
                resumed_at: float | None) -> dict[str, Any]:
        """By name, once the VM's record says ``address`` (updated at ``updated_at``,
        the destination resumed at ``resumed_at``; ``time.monotonic()`` s): until the
        client's resolver answered it (``dns_switch_ms``), and until a new connection by
        name was answered there (``new_conn_ms``, from the resume)."""
        p, offset = self.probe_report, self.clock_offset_ms()
        if p is None or offset is None:
            return {}
        answered = next((t for t, a in (p.dns_answers or []) if a == address), None)
        first_ok = (p.http_first_ok_ms or {}).get(address)

        def since(probe_ms: float | None, at: float | None) -> float | None:
            if probe_ms is None or at is None:
                return None
            return round(probe_ms + offset - at * 1000, 1)

        return {"dns_switch_ms": since(answered, updated_at),
                "new_conn_ms": since(first_ok, resumed_at)}

    def _lost_around(self, switchover: tuple[float, float] | None) -> int | None:
        offset, p = self.clock_offset_ms(), self.probe_report
        if p is None or switchover is None or offset is None:
            return None
        stop, resume = switchover
        return p.udp_lost_between((stop - SWITCHOVER_MARGIN_S) * 1000 - offset,
                                  (resume + SWITCHOVER_MARGIN_S) * 1000 - offset)

    def workload_detail(self) -> dict[str, Any] | None:
        """The workload's settings and, for ``web`` and ``app``, what the HTTP clients
        saw."""
        vm = self.scenario.vm
        if vm.workload == "dirty":
            return {"dirty_mib": vm.dirty_mib, "dirty_rate_mbps": vm.dirty_rate_mbps}
        if self.web is not None:
            return {"web_rps": vm.web_rps, "paths": list(self.web.spec.paths),
                    "report": self.web_report.to_dict() if self.web_report else None}
        return None


def _without_series(probe: dict[str, Any]) -> dict[str, Any]:
    """The probe's report as the record's ``network.probe`` keeps it: its series go to
    the record's ``series``, on the run's clock."""
    return {k: v for k, v in probe.items() if k not in ("udp_series", "http_series")}
