"""The measurement tools on real namespaces, and a short ``wanmig bench wan`` run.

Tolerances are those a noisy two-core CI machine holds (RTT and rate within
20 %); the bench's own targets are checked on its full run, not here.
Everything a test creates (namespaces, processes, registry files) must be
gone when it ends, also when the bench is cancelled half-way.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pyroute2 import AsyncIPRoute

from wanmig.bench.wan import CEILING, ENTRY_KEYS, run_wan_bench
from wanmig.children import ChildState
from wanmig.registry import STATE_DIR, Registry, new_run_id
from wanmig.testbed.netns import Namespace
from wanmig.wan import measure

from ..conftest import netns_names

pytestmark = pytest.mark.root

IP_A, IP_B = "10.98.0.1", "10.98.0.2"


def _processes_naming(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


@pytest.fixture
async def veth_pair() -> AsyncIterator[tuple[Namespace, Namespace, Registry]]:
    """Two namespaces joined by a plain veth pair: 10.98.0.1 <-> 10.98.0.2."""
    registry = Registry(new_run_id())
    a = Namespace(f"wm{registry.run_id}-ta", registry)
    b = Namespace(f"wm{registry.run_id}-tb", registry)
    try:
        for ns in (a, b):
            await ns.create()
        async with AsyncIPRoute(netns=a.name) as ipr:
            await ipr.link("add", ifname="eth0", kind="veth",
                           peer={"ifname": "eth0", "net_ns_fd": b.name})
        for ns, ip in ((a, IP_A), (b, IP_B)):
            async with AsyncIPRoute(netns=ns.name) as ipr:
                for ifname in ("lo", "eth0"):
                    idx = (await ipr.link_lookup(ifname=ifname))[0]
                    await ipr.link("set", index=idx, state="up")
                    if ifname == "eth0":
                        await ipr.addr("add", index=idx, address=ip, prefixlen=24)
        yield a, b, registry
    finally:
        for ns in (b, a):
            if ns.created:
                await ns.remove()
        assert not registry.pids, f"processes left registered: {registry.pids}"
        registry.close()


async def test_tools_on_a_plain_veth(veth_pair: tuple[Namespace, Namespace, Registry]) -> None:
    a, b, registry = veth_pair
    rtt = await measure.rtt(a.name, b.name, IP_B, rate_hz=200, seconds=1.0, registry=registry)
    assert rtt.sent == 200 and rtt.received == 200
    assert rtt.p50_ms is not None and rtt.p50_ms < 2.0       # a veth: about 0.1 ms
    assert rtt.forward_p50_ms is not None and rtt.forward_p50_ms < rtt.p50_ms

    put = await measure.goodput(a.name, b.name, IP_B, seconds=1.0, rate_mbit=1000, rtt_ms=0.1,
                                skip_s=0.3, registry=registry)
    assert put.goodput_mbit is not None and put.goodput_mbit > 100
    assert put.sndbuf is not None and put.sndbuf >= measure.BUFFER_MIN  # kernel doubles it

    lost = await measure.loss(a.name, b.name, IP_B, rate_mbit=2.0, seconds=1.0, drain_s=0.2,
                              registry=registry)
    assert lost.sent > 2000 and lost.loss_pct == 0.0
    assert lost.rate_sent_mbit == pytest.approx(2.0, rel=0.2)

    loaded = await measure.loaded_rtt(a.name, b.name, IP_B, load_mbit=50, seconds=1.0,
                                      drain_s=0.2, registry=registry)
    assert loaded.rtt.received > 150 and loaded.load.received > 3000
    assert loaded.load.rate_received_mbit == pytest.approx(50, rel=0.2)


async def test_a_failing_endpoint_is_reported_and_reaped(
        veth_pair: tuple[Namespace, Namespace, Registry]) -> None:
    a, b, registry = veth_pair
    # no echo server at all: the pinger gives up after its warm-up and says why
    ping = measure.ToolProcess(a.name, "udp-ping", "--target", IP_B, "--port", "9",
                               "--seconds", "1", "--warmup-timeout", "0.5", registry=registry)
    async with ping:
        await ping.spawn()
        with pytest.raises(measure.MeasurementError, match="no echo"):
            await ping.result(10.0)
    assert ping.state is ChildState.STOPPED and not registry.pids


async def test_bench_runs_on_a_custom_profile(tmp_path: Path) -> None:
    messages: list[str] = []
    out = tmp_path / "wan.json"
    result = await run_wan_bench([{"name": "ci", "rtt_ms": 20, "rate_mbit": 50}], seconds=2.0,
                                 repeat=2, out=out, say=messages.append)
    assert json.loads(out.read_text()) == result
    assert result["kind"] == "wan" and result["settings"]["repeat"] == 2
    assert [r["bench"] for r in result["results"]] == [
        {"case": "ci", "repeat": 0}, {"case": "ci", "repeat": 1},
        {"case": CEILING, "repeat": 0, "ceiling": True},
        {"case": CEILING, "repeat": 1, "ceiling": True}]
    for entry in result["results"][:2]:
        assert tuple(entry) == (*ENTRY_KEYS, "bench")
        assert entry["profile"] == "ci" and entry["backend"] in ("forwarder", "netem")
        for key in ("rtt_idle_p50_ms", "rtt_loaded_p50_ms"):
            assert entry[key] == pytest.approx(20, rel=0.2), key
        assert entry["rtt_saturated_p50_ms"] <= entry["rtt_saturated_bound_ms"] * 1.2
        assert entry["goodput_mbit"] == pytest.approx(50, rel=0.2)
        assert entry["loss_measured_pct"] == 0.0
        if entry["backend"] == "forwarder":
            assert entry["cpu_pct"] is not None and entry["cpu_pct"] > 0
    ci, ceiling = result["summary"]
    goodput = ci["figures"]["goodput_mbit"]
    assert ci["runs"] == 2 and goodput["n"] == 2
    assert goodput["min"] <= goodput["median"] <= goodput["max"]
    assert [(c["case"], c["check"]) for c in result["checks"]] == [("ci", "rtt_saturated_p50")]
    assert ceiling["case"] == CEILING and ceiling["figures"]["goodput_mbit"]["median"] > 100
    _assert_nothing_left(messages)


async def test_cancelled_bench_leaves_nothing_behind() -> None:
    messages: list[str] = []
    task = asyncio.create_task(run_wan_bench(["continental"], seconds=2.0, repeat=1,
                                             say=messages.append, ceiling=False))
    for _ in range(200):  # until the loaded-RTT step runs: tools and forwarder alive
        await asyncio.sleep(0.05)
        if any("paced UDP" in m for m in messages):
            break
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_nothing_left(messages)


def _assert_nothing_left(messages: list[str]) -> None:
    names = re.search(r"namespaces (\S+), (\S+), (\S+);", messages[0])
    assert names, messages[0]
    run_id = names.group(1)[2:].split("-")[0]
    assert not set(names.groups()) & netns_names()
    assert not (STATE_DIR / f"{run_id}.json").exists()
    assert not _processes_naming(str(STATE_DIR / run_id))
