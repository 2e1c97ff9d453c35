"""``wanmig bench tunnel``: what encrypting the stretched segment costs the client.

The testbed of a migration (two sites, their routers, the client's site, the
emulated WAN), with the VM's place at B taken by a namespace on B's bridge
(``wm<id>-v``: the VM's address, MAC and gateway, on B's ``tap0``), so that the
path is exactly the one ``l2-extend`` gives a client after the move: VM at B ->
B's bridge -> the tunnel over the WAN -> A's bridge -> router A -> client, and
back.  Each run starts the tunnel (``network.tunnel``: ``vxlan`` or ``openvpn``),
sends one bulk TCP stream from the VM's place to the client for ``seconds`` after
its warm-up (``wan.measure.goodput``) and stops the tunnel; the two tunnels take
turns, ``repeat`` times each, so both see the same machine.  OpenVPN's CPU (both
ends, % of one core) is read from ``/proc`` over the stream.

The target: the median goodput through OpenVPN is at most 10 % below VXLAN's.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute

from ..config import parse_scenario
from ..memory.tls import DeploymentCa, default_pki_dir
from ..network.l2extend import stretch_tunnel
from ..network.tunnel import Credentials
from ..registry import Registry, new_run_id
from ..testbed import Testbed
from ..testbed.netns import Namespace, add_veth, link_up
from ..wan import measure
from .runner import BenchRun, Entry, Figures, Say, medians

DEFAULT_REPEAT = 5
DEFAULT_SECONDS = 10.0
MAX_COST = 0.10
MODES = ("vxlan", "openvpn")


@dataclass(frozen=True)
class TunnelCase:
    name: str

    @property
    def labels(self) -> dict[str, Any]:
        return {"tunnel": self.name}


FIGURES: Figures = {
    "goodput_mbit": lambda r: r.get("goodput_mbit"),
    "tunnel_cpu_pct": lambda r: r.get("tunnel_cpu_pct"),
    "setup_ms": lambda r: r.get("setup_ms"),
}


def evaluate_checks(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenVPN's median goodput against VXLAN's, from the same run's turns."""
    rows = {row["case"]: medians(row) for row in summary}
    plain = (rows.get("vxlan") or {}).get("goodput_mbit")
    secure = (rows.get("openvpn") or {}).get("goodput_mbit")
    if not plain or secure is None:
        return [{"check": "encryption costs <= 10 % of client goodput", "ok": None,
                 "detail": "not measured"}]
    cost = 1 - secure / plain
    return [{"check": f"encryption costs <= {MAX_COST:.0%} of client goodput",
             "ok": cost <= MAX_COST,
             "detail": f"openvpn {secure:.1f} against vxlan {plain:.1f} Mbit/s (medians): "
                       f"encryption costs {cost:.1%}",
             "limit": {"figure": "goodput_mbit", "value": plain * (1 - MAX_COST),
                       "case": "openvpn"}}]


def _cpu_s(pids: Sequence[int]) -> float | None:
    """utime + stime of ``pids`` (seconds), None where there are none."""
    if not pids:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def vm_place(testbed: Testbed, registry: Registry) -> Namespace:
    """A namespace with the VM's address, MAC and gateway on B's bridge (port ``vmp0``,
    beside the tap QEMU would use); removed again if it cannot be made whole."""
    addr = testbed.addr
    vm = Namespace(f"wm{registry.run_id}-v", registry)
    await vm.create()
    try:
        await add_veth(vm, "eth0", testbed.site_b, "vmp0")
        async with AsyncIPRoute(netns=testbed.site_b.name) as ipr:
            br = (await ipr.link_lookup(ifname="br0"))[0]
            await link_up(ipr, "vmp0", master=br)
        async with AsyncIPRoute(netns=vm.name) as ipr:
            await link_up(ipr, "lo")
            index = await link_up(ipr, "eth0", address=addr.vm_mac, mtu=1500)
            await ipr.addr("add", index=index, address=addr.vm_ip,
                           prefixlen=addr.vm_prefixlen)
            await ipr.route("add", dst="0.0.0.0/0", gateway=addr.gateway("a"))
    except BaseException:
        await vm.remove()
        raise
    return vm


async def run_tunnel_bench(*, repeat: int = DEFAULT_REPEAT, seconds: float = DEFAULT_SECONDS,
                           profile: str = "continental", out: Path | None = None,
                           say: Say | None = None) -> dict[str, Any]:
    """Both tunnels in turns, ``repeat`` runs each; the runner's document, kind ``tunnel``."""
    wan = parse_scenario({"wan": {"profile": profile}}).wan
    cases = [TunnelCase(m) for m in MODES]
    bench = BenchRun("tunnel", cases, figures=FIGURES, checks=evaluate_checks,
                     settings={"profile": profile, "seconds": seconds,
                               "rate_mbit": wan.link.rate_mbit if wan.link else None},
                     repeat=repeat, out=out, say=say)
    ca = await asyncio.to_thread(DeploymentCa.load_or_create, default_pki_dir())
    registry = Registry(new_run_id())
    testbed = Testbed(registry, wan=wan.link, client_wan=wan.client_link)
    bench.begin()
    vm: Namespace | None = None
    try:
        await testbed.up()
        vm = await vm_place(testbed, registry)
        rtt, _ = await testbed.measure_link(goodput=False)
        bench.note_settings(rtt_measured_ms=rtt)
        for turn in range(repeat):
            for case in cases:
                bench.say(f"[{len(bench.doc['results']) + 1}/{bench.total}] {case.name} "
                          f"(run {turn + 1} of {repeat})")
                entry = await _measure(testbed, registry, vm, case.name, ca, seconds,
                                       rtt or 50.0)
                bench.say(f"    {entry['goodput_mbit']:.1f} Mbit/s"
                          + (f", OpenVPN {entry['tunnel_cpu_pct']:.0f} % of a core"
                             if entry["tunnel_cpu_pct"] is not None else ""))
                bench.add(case, turn, entry)
    finally:
        if vm is not None:
            await vm.remove()
        await testbed.down()
        registry.close()
    return bench.doc


async def _measure(testbed: Testbed, registry: Registry, vm: Namespace, mode: str,
                   ca: DeploymentCa, seconds: float, rtt_ms: float) -> Entry:
    tb = testbed
    tunnel = stretch_tunnel(tb, registry, encrypt=mode == "openvpn")
    await tunnel.start(Credentials.of(ca))
    try:
        p = tb.wan_profile
        cpu0, t0 = _cpu_s(tunnel.pids), time.monotonic()
        result = await measure.goodput(vm.name, tb.client.name, tb.addr.client_ip,
                                       seconds=seconds, rate_mbit=p.rate_mbit if p else None,
                                       rtt_ms=rtt_ms, queue_ms=p.queue_ms if p else 0.0,
                                       registry=registry)
        cpu1, wall = _cpu_s(tunnel.pids), time.monotonic() - t0
    finally:
        await tunnel.stop()
    cpu = (None if cpu0 is None or cpu1 is None
           else round((cpu1 - cpu0) / wall * 100, 1))
    return {"status": "completed", "tunnel": tunnel.describe(),
            "goodput_mbit": result.goodput_mbit,
            "tunnel_cpu_pct": cpu, "setup_ms": tunnel.setup_ms}
