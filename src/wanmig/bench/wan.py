"""``wanmig bench wan``: set against measured, for every WAN profile.

The bench joins two sites through a middle namespace, from the testbed's
building blocks (``wanmig.testbed.netns``), and runs a ``WanLink`` there::

    site A (wm<id>-a)              middle (wm<id>-w)              site B (wm<id>-b)
    eth0 10.99.0.1/24 ──veth── left ┐  WanLink  ┌ right ──veth── eth0 10.99.0.2/24

Each profile (the named ones, then 50 ms RTT at each ``extra_rates_mbit``) is
a case of the runner (``wanmig.bench.runner``), run ``repeat`` times (3 by
default: one TCP stream's goodput varies by 15 % from one stream to the next
on the same link).  A run starts a link, measures A -> B with ``measure.py``
and stops the link::

    idle RTT          200 pings/s for ``seconds``
    loaded RTT        the same while paced UDP at half the set rate runs A -> B
                      (the bottleneck queue stays short: the delay line's own error)
    saturated RTT     the same while one bulk TCP stream fills the link (set RTT +
      + goodput       at most a full queue); the stream's goodput at the receiver
                      after its warm-up, and the forwarder's CPU meanwhile
    loss              small datagrams A -> B at a tenth of the rate (at most
                      ``LOSS_PROBE_MAX_MBIT``), as many as a +/-20 % (3 sigma)
                      figure needs: 44 775 at 0.5 % (``measure.loss_packets_needed``);
                      ``seconds`` of them on a loss-free link

Then the ceiling case: one TCP stream through a link with no delay and no
rate.  With the defaults (``seconds`` 5, ``repeat`` 3) the whole run takes
about 12 minutes on 2 cores (``repeat`` 1: about 4; ``seconds`` 2 halves it,
with noisier p99s).

Each result entry has exactly the keys of ``ENTRY_KEYS`` (the ceiling's:
profile, backend, goodput, CPU) plus the runner's ``bench`` label.  The
targets (``evaluate_checks``, pure) are checked on the medians of each
profile's runs.  ``cpu_pct`` is the forwarder's CPU (% of one core) while the
bulk TCP stream ran: the link at its busiest; None for netem, which has no
process.

TCP uses ``cc``: cubic by default, Linux's stock default and the one that
fills queues, so that "saturated" means a full queue and results do not
depend on the host's setting (None: the namespace's default).  One cubic
stream does not fill a long fat pipe with a shallow queue (150 ms at
250 Mbit/s with 20 ms of queue: about 55-60 % of the rate, BBR about 90 %):
that is TCP, not the link, and no goodput target applies there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NetworkError
from ..registry import Registry, new_run_id
from ..testbed.netns import Namespace, configure_host, join_through, owned_namespaces
from ..wan import measure
from ..wan.link import WanLink
from ..wan.profiles import PROFILES, LinkProfile, resolve_profile
from ..wan.tools import packets_per_second
from .runner import BenchRun, Entry, Figures, Say, medians, quiet

log = logging.getLogger("wanmig.bench.wan")

DEFAULT_SECONDS = 5.0
DEFAULT_REPEAT = 3
PING_HZ = 200.0                 # 1000 samples in 5 s: a p99 from 10 samples above it
DEFAULT_EXTRA_RATES = (10.0, 100.0, 200.0)
RATE_POINT_RTT_MS = 50.0
LOSS_PROBE_SHARE = 0.1          # loss probe rate / link rate: no queue ever builds
LOSS_PROBE_MAX_MBIT = 5.0       # 5 Mbit/s of 64-byte datagrams: 5 900 per second
LOAD_SHARE = 0.5                # the loaded-RTT measurement's UDP load / link rate
UNRATED_LOAD_MBIT = 200.0       # ... when the link has no rate
RTT_TARGET_PROFILES = ("continental",)  # where the RTT accuracy targets apply
RTT_P50_TOLERANCE_MS = 1.0
RTT_P99_TOLERANCE_MS = 2.0
SATURATED_MARGIN_MS = 2.0
GOODPUT_SHARE = 0.9
LOSS_REL_TOLERANCE = 0.2
CEILING = "ceiling"

ENTRY_KEYS = (
    "profile", "backend", "rtt_set_ms", "rtt_idle_p50_ms", "rtt_loaded_p50_ms",
    "rtt_loaded_p99_ms", "rtt_saturated_p50_ms", "queue_ms", "rtt_saturated_bound_ms",
    "rate_set_mbit", "goodput_mbit", "loss_set_pct", "loss_measured_pct", "cpu_pct",
)
#: the check of each target, and the figure it reads
CHECK_FIGURES = {
    "rtt_idle_p50": "rtt_idle_p50_ms", "rtt_loaded_p50": "rtt_loaded_p50_ms",
    "rtt_loaded_p99": "rtt_loaded_p99_ms", "rtt_saturated_p50": "rtt_saturated_p50_ms",
    "goodput": "goodput_mbit", "loss": "loss_measured_pct",
}
#: what varies from run to run: every measured figure (None where a case has none)
FIGURES: Figures = {key: (lambda entry, key=key: entry.get(key))
                    for key in (*CHECK_FIGURES.values(), "cpu_pct")}


# ------------------------------------------------------------------ pure parts

@dataclass(frozen=True)
class WanCase:
    """One case of the matrix: a profile measured in full, or the forwarder's ceiling."""

    profile: LinkProfile
    ceiling: bool = False

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def labels(self) -> dict[str, Any]:
        return {"ceiling": True} if self.ceiling else {}


def check_seconds(seconds: float) -> float:
    """``seconds`` if it is a positive, finite length; ConfigError otherwise."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"must be a positive number (got {seconds!r})",
                          field="seconds")
    return float(seconds)


def plan_profiles(profiles: Sequence[str | dict[str, Any] | LinkProfile] | None,
                  extra_rates_mbit: Sequence[float] | None) -> list[LinkProfile]:
    """The profiles to measure, in order.

    ``profiles`` None means every named profile; entries may be names,
    ``resolve_profile`` tables or profiles.  ``extra_rates_mbit`` None means
    ``DEFAULT_EXTRA_RATES`` when ``profiles`` is None and none otherwise
    (asking for some profiles means only those).
    """
    chosen = list(PROFILES.values()) if profiles is None else [resolve_profile(p)
                                                               for p in profiles]
    if extra_rates_mbit is None:
        extra_rates_mbit = DEFAULT_EXTRA_RATES if profiles is None else ()
    chosen += [rate_point(rate) for rate in extra_rates_mbit]
    return chosen


def plan_cases(profiles: Sequence[str | dict[str, Any] | LinkProfile] | None,
               extra_rates_mbit: Sequence[float] | None, *, ceiling: bool = True
               ) -> list[WanCase]:
    """``plan_profiles``' profiles, then the ceiling; ConfigError if two share a name."""
    cases = [WanCase(p) for p in plan_profiles(profiles, extra_rates_mbit)]
    if ceiling:
        cases.append(WanCase(ceiling_profile(), ceiling=True))
    names = [c.name for c in cases]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{name!r} is measured twice: give each profile its own name",
                              field="profile")
    return cases


def rate_point(rate_mbit: float) -> LinkProfile:
    """The custom profile of one extra rate point: 50 ms RTT at ``rate_mbit``."""
    return LinkProfile(name=f"rtt{RATE_POINT_RTT_MS:g}-{rate_mbit:g}mbit",
                       rtt_ms=RATE_POINT_RTT_MS, rate_mbit=rate_mbit)


def ceiling_profile() -> LinkProfile:
    return LinkProfile(name=CEILING, rtt_ms=0.0, rate_mbit=None)


def saturated_bound_ms(p: LinkProfile) -> float | None:
    """Highest acceptable RTT p50 on a full link: set RTT + queue drain time + 2 ms."""
    if p.rate_mbit is None:
        return None
    return round(p.rtt_ms + p.queue_ms + SATURATED_MARGIN_MS, 3)


@dataclass(frozen=True)
class LossPlan:
    """How the loss of one profile is measured: so many datagrams at so much rate."""

    rate_mbit: float
    packets: int
    seconds: float


def loss_plan(p: LinkProfile, seconds: float) -> LossPlan:
    """Loss probe for ``p``: a tenth of the rate (<= 5 Mbit/s), enough packets for +/-20 %.

    On a loss-free link, ``seconds`` worth (the figure must come out 0).
    """
    rate = LOSS_PROBE_MAX_MBIT if p.rate_mbit is None else min(
        LOSS_PROBE_MAX_MBIT, LOSS_PROBE_SHARE * p.rate_mbit)
    pps = packets_per_second(rate, measure.LOSS_PAYLOAD)
    if p.loss_pct > 0:
        packets = measure.loss_packets_needed(p.loss_pct, LOSS_REL_TOLERANCE)
        return LossPlan(rate, packets, round(max(seconds, packets / pps), 2))
    return LossPlan(rate, max(1, round(pps * seconds)), seconds)


def evaluate_checks(figures: Mapping[str, Any], p: LinkProfile) -> dict[str, bool]:
    """The targets that apply to ``figures`` (one entry, or medians) measured for ``p``.

    rtt_idle_p50 / rtt_loaded_p50 / rtt_loaded_p99   p50 within 1 ms and p99
        within 2 ms of the set RTT (profiles in RTT_TARGET_PROFILES)
    rtt_saturated_p50   p50 on a full link <= set RTT + queue drain time + 2 ms
        (any profile with a rate)
    goodput             one TCP stream >= 90 % of the rate (the 50 ms RTT points
        without loss: the rate points and continental)
    loss                measured within +/-20 % (relative) of the set loss (loss set)

    A figure that could not be measured (None) fails its target.
    """
    checks: dict[str, bool] = {}
    set_rtt = p.rtt_ms

    def near(value: float | None, tolerance: float) -> bool:
        return value is not None and abs(value - set_rtt) <= tolerance

    if p.name in RTT_TARGET_PROFILES:
        checks["rtt_idle_p50"] = near(figures["rtt_idle_p50_ms"], RTT_P50_TOLERANCE_MS)
        checks["rtt_loaded_p50"] = near(figures["rtt_loaded_p50_ms"], RTT_P50_TOLERANCE_MS)
        checks["rtt_loaded_p99"] = near(figures["rtt_loaded_p99_ms"], RTT_P99_TOLERANCE_MS)
    bound = saturated_bound_ms(p)
    if bound is not None:
        sat = figures["rtt_saturated_p50_ms"]
        checks["rtt_saturated_p50"] = sat is not None and sat <= bound
    if p.rate_mbit is not None and p.rtt_ms == RATE_POINT_RTT_MS and p.loss_pct == 0:
        put = figures["goodput_mbit"]
        checks["goodput"] = put is not None and put >= GOODPUT_SHARE * p.rate_mbit
    if p.loss_pct > 0:
        measured = figures["loss_measured_pct"]
        checks["loss"] = (measured is not None
                          and abs(measured - p.loss_pct) <= LOSS_REL_TOLERANCE * p.loss_pct)
    return checks


def summary_checks(summary: Sequence[dict[str, Any]],
                   profiles: Mapping[str, LinkProfile]) -> list[dict[str, Any]]:
    """``evaluate_checks`` on each measured profile's medians, as the runner's check entries."""
    checks: list[dict[str, Any]] = []
    for row in summary:
        p = profiles.get(row["case"])
        if p is None:           # the ceiling: no target
            continue
        for name, ok in evaluate_checks(medians(row), p).items():
            fig = row["figures"][CHECK_FIGURES[name]]
            detail = f"{CHECK_FIGURES[name]} {fig['median']}"
            if fig["n"] > 1:
                detail += f" (median of {fig['n']}, {fig['min']}–{fig['max']})"
            checks.append({"case": row["case"], "check": name, "ok": ok, "detail": detail})
    return checks


def make_entry(p: LinkProfile, *, backend: str, idle: measure.RttResult,
               loaded: measure.LoadedRtt, saturated: measure.SaturatedRtt,
               lost: measure.LossResult, cpu_pct: float | None) -> dict[str, Any]:
    """One result entry: ``ENTRY_KEYS`` from the measurements."""
    return {
        "profile": p.name,
        "backend": backend,
        "rtt_set_ms": p.rtt_ms,
        "rtt_idle_p50_ms": idle.p50_ms,
        "rtt_loaded_p50_ms": loaded.rtt.p50_ms,
        "rtt_loaded_p99_ms": loaded.rtt.p99_ms,
        "rtt_saturated_p50_ms": saturated.rtt.p50_ms,
        "queue_ms": p.queue_ms,
        "rtt_saturated_bound_ms": saturated_bound_ms(p),
        "rate_set_mbit": p.rate_mbit,
        "goodput_mbit": _round(saturated.goodput.goodput_mbit, 2),
        "loss_set_pct": p.loss_pct,
        "loss_measured_pct": lost.loss_pct,
        "cpu_pct": cpu_pct,
    }


def cpu_pct(cpu_s_before: float | None, cpu_s_after: float | None, wall_s: float) -> float | None:
    """CPU seconds used over ``wall_s`` as a percentage of one core."""
    if cpu_s_before is None or cpu_s_after is None or wall_s <= 0:
        return None
    return round(100.0 * (cpu_s_after - cpu_s_before) / wall_s, 1)


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


# ------------------------------------------------------------------- topology

@dataclass(frozen=True)
class BenchSites:
    """Site A, the middle and site B of the diagram above (``bench_sites`` builds them)."""

    site_a: Namespace
    middle: Namespace
    site_b: Namespace
    registry: Registry

    ip_a = "10.99.0.1"
    ip_b = "10.99.0.2"
    prefixlen = 24
    left, right = "left", "right"   # the middle namespace's interfaces (no addresses)
    mtu = 1500

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        return (self.site_a, self.middle, self.site_b)


@contextlib.asynccontextmanager
async def bench_sites(registry: Registry) -> AsyncIterator[BenchSites]:
    """The bench's three namespaces for the block; all removed when it ends, however."""
    rid = registry.run_id
    sites = BenchSites(Namespace(f"wm{rid}-a", registry), Namespace(f"wm{rid}-w", registry),
                       Namespace(f"wm{rid}-b", registry), registry)
    async with owned_namespaces(sites.namespaces):
        await join_through(sites.site_a, "eth0", sites.middle, (sites.left, sites.right),
                           sites.site_b, "eth0", mtu=sites.mtu)
        for site, ip in ((sites.site_a, sites.ip_a), (sites.site_b, sites.ip_b)):
            await configure_host(site, "eth0", ip, sites.prefixlen, mtu=sites.mtu)
            await _tune_buffers(site)
        yield sites


async def _tune_buffers(ns: Namespace) -> None:
    """Let sockets in ``ns`` have the buffers a long fat link needs.

    The tools set their buffers with SO_*BUFFORCE (root), which ignores
    rmem_max/wmem_max; these sysctls serve everything else (the unforced
    form, autotuning).  net.core.rmem_max/wmem_max are per namespace only on
    recent kernels: where they are global, they are left alone.
    """
    top = str(measure.BUFFER_MAX)
    for key in ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"):
        await ns.sysctl(key, f"4096 131072 {top}")
    for key in ("net.core.rmem_max", "net.core.wmem_max"):
        try:
            await ns.sysctl(key, top)
        except NetworkError:
            log.debug("%s is not per namespace here: left alone", key)


# ---------------------------------------------------------------------- bench

def _link(sites: BenchSites, p: LinkProfile, backend: str) -> WanLink:
    return WanLink(sites.middle.name, sites.left, sites.right, p, registry=sites.registry,
                   backend=backend)


async def measure_profile(sites: BenchSites, p: LinkProfile, *, seconds: float,
                          cc: str | None, backend: str = "auto",
                          say: Say | None = None) -> Entry:
    """Start a link with ``p``, measure it A -> B, stop it; one result entry."""
    say = say or quiet
    a, b, ip_b, reg = sites.site_a.name, sites.site_b.name, sites.ip_b, sites.registry
    drain_s = (p.rtt_ms / 2 + p.jitter_ms + p.queue_ms) / 1000 + 0.25
    load = UNRATED_LOAD_MBIT if p.rate_mbit is None else LOAD_SHARE * p.rate_mbit
    async with _link(sites, p, backend) as link:
        say(f"{p.summary()} [{link.backend}]: idle RTT")
        idle = await measure.rtt(a, b, ip_b, rate_hz=PING_HZ, seconds=seconds, registry=reg)
        say(f"{p.name}: RTT under {load:g} Mbit/s of paced UDP")
        loaded = await measure.loaded_rtt(a, b, ip_b, load_mbit=load, rate_hz=PING_HZ,
                                          seconds=seconds, drain_s=drain_s, registry=reg)
        say(f"{p.name}: RTT and goodput of one bulk TCP stream")
        before, t0 = await _cpu_s(link), time.monotonic()
        saturated = await measure.saturated_rtt(a, b, ip_b, rate_mbit=p.rate_mbit,
                                                rtt_ms=p.rtt_ms, queue_ms=p.queue_ms,
                                                seconds=seconds, rate_hz=PING_HZ, cc=cc,
                                                registry=reg)
        cpu = cpu_pct(before, await _cpu_s(link), time.monotonic() - t0)
        plan = loss_plan(p, seconds)
        say(f"{p.name}: loss, {plan.packets} datagrams at {plan.rate_mbit:g} Mbit/s")
        lost = await measure.loss(a, b, ip_b, rate_mbit=plan.rate_mbit, seconds=plan.seconds,
                                  packets=plan.packets, drain_s=drain_s, registry=reg)
        backend_used = link.backend
    log.debug("%s: idle %s loaded %s saturated %s loss %s", p.name, idle, loaded, saturated,
              lost)
    entry = make_entry(p, backend=backend_used, idle=idle, loaded=loaded,
                       saturated=saturated, lost=lost, cpu_pct=cpu)
    missed = [name for name, ok in evaluate_checks(entry, p).items() if not ok]
    say(f"{p.name}: RTT {entry['rtt_idle_p50_ms']} / {entry['rtt_loaded_p99_ms']} (p99 loaded) "
        f"/ {entry['rtt_saturated_p50_ms']} ms (saturated), goodput {entry['goodput_mbit']} "
        f"Mbit/s, loss {entry['loss_measured_pct']} %, CPU {cpu} %"
        + (f"; this run missed {', '.join(missed)}" if missed else ""))
    return entry


async def measure_ceiling(sites: BenchSites, *, seconds: float, cc: str | None,
                          backend: str = "auto", say: Say | None = None) -> Entry:
    """One TCP stream through a link with no delay and no rate: the forwarder's limit."""
    say = say or quiet
    say("ceiling: one TCP stream, no delay, no rate limit")
    async with _link(sites, ceiling_profile(), backend) as link:
        # sized as if the forwarder added 1 ms: it queues frames under load
        before, t0 = await _cpu_s(link), time.monotonic()
        put = await measure.goodput(sites.site_a.name, sites.site_b.name, sites.ip_b,
                                    seconds=seconds, rate_mbit=None, rtt_ms=1.0, cc=cc,
                                    skip_s=0.5, registry=sites.registry)
        cpu = cpu_pct(before, await _cpu_s(link), time.monotonic() - t0)
        entry = {"profile": CEILING, "backend": link.backend,
                 "goodput_mbit": _round(put.goodput_mbit, 1), "cpu_pct": cpu}
    say(f"ceiling: {entry['goodput_mbit']} Mbit/s at {cpu} % CPU")
    return entry


async def _cpu_s(link: WanLink) -> float | None:
    stats = await link.stats()
    value = stats.get("cpu_s")
    return None if value is None else float(value)


async def run_wan_bench(profiles: Sequence[str | dict[str, Any] | LinkProfile] | None = None,
                        *, extra_rates_mbit: Sequence[float] | None = None,
                        seconds: float = DEFAULT_SECONDS, repeat: int = DEFAULT_REPEAT,
                        ceiling: bool = True, cc: str | None = "cubic", backend: str = "auto",
                        out: Path | None = None, say: Say | None = None) -> dict[str, Any]:
    """Measure every case ``repeat`` times (see the module docstring); kind ``wan``.

    ``profiles`` None: all named profiles plus 50 ms RTT at ``extra_rates_mbit``
    (default 10, 100, 200 Mbit/s; with explicit ``profiles`` none unless
    given).  ``seconds`` is the length of each RTT measurement and of the
    steady part of each TCP stream.  Every option is checked (ConfigError)
    before a namespace exists; everything the bench creates is removed
    before it returns or raises.
    """
    seconds = check_seconds(seconds)
    cases = plan_cases(profiles, extra_rates_mbit, ceiling=ceiling)
    measured = {c.name: c.profile for c in cases if not c.ceiling}
    bench = BenchRun("wan", cases, figures=FIGURES,
                     checks=lambda summary: summary_checks(summary, measured),
                     settings={"seconds": seconds, "ping_hz": PING_HZ, "cc": cc or "default",
                               "backend": backend},
                     repeat=repeat, out=out, say=say)
    bench.begin()
    tell = bench.say
    registry = Registry(new_run_id())
    try:
        async with bench_sites(registry) as sites:
            tell(f"namespaces {', '.join(ns.name for ns in sites.namespaces)}; "
                 f"{len(cases)} cases, {repeat} run(s) each, {seconds:g} s per measurement")

            async def run(case: WanCase, index: int) -> Entry:
                if case.ceiling:
                    return await measure_ceiling(sites, seconds=seconds, cc=cc,
                                                 backend=backend, say=tell)
                return await measure_profile(sites, case.profile, seconds=seconds, cc=cc,
                                             backend=backend, say=tell)

            doc = await bench.run(run)
    finally:
        if not registry.namespaces and not registry.pids:
            registry.close()  # else `wanmig clean` finds what is left
    tell(f"done in {doc['seconds']:.0f} s")
    return doc
