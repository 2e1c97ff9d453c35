"""Measuring a link between two namespaces: the async controller side.

Every measurement runs the endpoint programs of ``tools.py`` as separate
processes inside the two site namespaces (servers in B, clients in A, so the
load always flows A -> B; a namespace None means this process's own) and reads
back their one JSON result each::

    rtt()            udp-echo in B, udp-ping in A                  -> RttResult
    goodput()        tcp-sink in B, tcp-source in A                -> GoodputResult
    loss()           udp-sink in B, udp-blast in A (small packets) -> LossResult
    loaded_rtt()     rtt() while udp-blast sends at a given rate   -> LoadedRtt
    saturated_rtt()  rtt() while one bulk TCP stream fills the link -> SaturatedRtt

A paced UDP load at half the link rate keeps the bottleneck queue short, so
``loaded_rtt`` shows the delay line's own error under load; a bulk TCP
stream fills the queue, so ``saturated_rtt`` shows set RTT plus queue.  The
TCP stream of ``saturated_rtt`` also gives the goodput (the pings add about
0.1 Mbit/s to it).

Every process is registered with the run's ``Registry`` while it lives, every
wait has a timeout, and every process is reaped on every path (``ToolProcess``
is an ``async with``).  Results are frozen dataclasses with ``to_dict()``.
The sizing rules (socket buffers from the bandwidth-delay product, TCP
warm-up, how many packets a loss figure needs) are pure functions below.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import sys
import typing
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Self

from ..children import JsonLinesChild, module_argv, owner_of, strip_event
from ..errors import MeasurementError
from ..registry import Registry

log = logging.getLogger("wanmig.wan.measure")

ECHO_PORT = 7001
UDP_SINK_PORT = 7002
TCP_SINK_PORT = 7003

READY_TIMEOUT_S = 15.0      # a server prints "ready" (Python start-up on a loaded machine)
RESULT_MARGIN_S = 15.0      # a client's result beyond its own planned duration
BUFFER_MIN = 256 << 10      # socket buffer floor (bytes)
BUFFER_MAX = 64 << 20       # ... and cap: 2 x BDP of 1 Gbit/s at 250 ms
UNLIMITED_RATE_MBIT = 10_000.0  # what "no rate limit" is sized for
LOSS_PAYLOAD = 64           # bytes per loss-probe datagram: 106 bytes on the wire
LOAD_LEAD_S = 0.5           # a load runs this long before the pings start


# ------------------------------------------------------------ pure sizing rules

def bdp_bytes(rate_mbit: float, rtt_ms: float) -> int:
    """Bandwidth-delay product in bytes."""
    return int(rate_mbit * 1e6 / 8 * rtt_ms / 1000)


def socket_buffer_bytes(rate_mbit: float | None, rtt_ms: float, queue_ms: float = 0.0) -> int:
    """SO_SNDBUF/SO_RCVBUF for one stream: 2 x BDP of the loaded RTT, within bounds.

    The loaded RTT is the set RTT plus a full queue.  Twice the BDP because
    Linux keeps part of the buffer for bookkeeping (the value set is doubled,
    and about half of the total is window) and to leave room for recovery
    after a loss.  No rate limit is sized as ``UNLIMITED_RATE_MBIT``.
    """
    rate = UNLIMITED_RATE_MBIT if rate_mbit is None else rate_mbit
    return max(BUFFER_MIN, min(BUFFER_MAX, 2 * bdp_bytes(rate, rtt_ms + queue_ms)))


def tcp_warmup_s(rtt_ms: float, queue_ms: float = 0.0) -> float:
    """Seconds of a bulk stream left out of its goodput: slow start and queue filling.

    Slow start needs about log2(BDP / 10 segments) < 12 round trips, then the
    queue fills: 12 loaded RTTs, at least 0.5 s, at most 3 s.
    """
    return min(3.0, max(0.5, 12 * (rtt_ms + queue_ms) / 1000))


def loss_packets_needed(loss_pct: float, rel_tol: float = 0.2, z: float = 3.0) -> int:
    """Packets for a measured loss within ``rel_tol`` (relative) of ``loss_pct``, z sigma.

    The number lost is binomial: its relative standard deviation is
    sqrt((1 - p) / (n p)), so n = z^2 (1 - p) / (p rel_tol^2).  At 0.5 % and
    +/-20 % that is 22 400 packets at 2 sigma, 50 000 at 3 sigma (z = 3 is
    the default: the bench should fail that check about 3 runs in 1000).
    """
    if not 0 < loss_pct < 100:
        raise ValueError(f"loss must be within (0, 100) %, got {loss_pct}")
    p = loss_pct / 100
    return math.ceil(z * z * (1 - p) / (p * rel_tol * rel_tol))


def loss_percent(sent: int, received: int) -> float | None:
    """Measured loss in %, None when nothing was sent (duplicates do not count)."""
    if sent <= 0:
        return None
    return round(100.0 * max(0, sent - received) / sent, 4)


# --------------------------------------------------------------------- results

class _Result:
    """to_dict/from_dict for the frozen result dataclasses, nested ones included.

    ``from_dict`` ignores keys it does not know and rebuilds fields whose type
    is itself a result.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                value, kind = data[f.name], hints[f.name]
                nested = isinstance(kind, type) and issubclass(kind, _Result)
                kwargs[f.name] = kind.from_dict(value) if nested and value is not None else value
        return cls(**kwargs)


@dataclass(frozen=True)
class RttResult(_Result):
    """Round trips of paced UDP pings, ms; ``forward``/``reverse``: the one-way halves.

    Round trips exclude the time the echo held each datagram (its p99 is
    ``echo_held_p99_ms``, a measure of the endpoint's own noise).  The halves
    come from the echo's stamps (every namespace shares the host's clock):
    they tell which direction a delay was added in.
    """

    sent: int
    received: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    min_ms: float | None
    max_ms: float | None
    forward_p50_ms: float | None = None
    forward_p99_ms: float | None = None
    reverse_p50_ms: float | None = None
    reverse_p99_ms: float | None = None
    echo_held_p99_ms: float | None = None
    send_late_p99_ms: float | None = None
    seconds: float = 0.0

    @property
    def loss_pct(self) -> float | None:
        return loss_percent(self.sent, self.received)

    @classmethod
    def from_tool(cls, r: dict[str, Any]) -> RttResult:
        rtt = r["rtt"]
        return cls(sent=r["sent"], received=r["received"], p50_ms=rtt["p50_ms"],
                   p90_ms=rtt["p90_ms"], p99_ms=rtt["p99_ms"], mean_ms=rtt["mean_ms"],
                   min_ms=rtt["min_ms"], max_ms=rtt["max_ms"],
                   forward_p50_ms=r["forward"]["p50_ms"], forward_p99_ms=r["forward"]["p99_ms"],
                   reverse_p50_ms=r["reverse"]["p50_ms"], reverse_p99_ms=r["reverse"]["p99_ms"],
                   echo_held_p99_ms=(r.get("echo_held") or {}).get("p99_ms"),
                   send_late_p99_ms=r.get("send_late_p99_ms"), seconds=r.get("seconds", 0.0))


@dataclass(frozen=True)
class GoodputResult(_Result):
    """One TCP stream: goodput (Mbit/s) at the receiver after ``skip_s``, and TCP's view."""

    goodput_mbit: float | None
    mean_mbit: float | None
    bytes: int
    seconds: float
    skip_s: float
    sndbuf: int | None = None
    rcvbuf: int | None = None
    cc: str | None = None
    tcp_rtt_ms: float | None = None
    retransmits: int | None = None

    @classmethod
    def from_tools(cls, sink: dict[str, Any], source: dict[str, Any]) -> GoodputResult:
        return cls(goodput_mbit=sink.get("goodput_mbit"), mean_mbit=sink.get("mean_mbit"),
                   bytes=sink.get("bytes", 0), seconds=sink.get("seconds", 0.0),
                   skip_s=sink.get("skip_s", 0.0), sndbuf=source.get("sndbuf"),
                   rcvbuf=sink.get("rcvbuf"), cc=source.get("cc"),
                   tcp_rtt_ms=source.get("tcp_rtt_ms"),
                   retransmits=source.get("tcp_total_retrans"))


@dataclass(frozen=True)
class LossResult(_Result):
    """A paced, sequence-numbered UDP stream A -> B: one-way loss and what arrived.

    ``sink_drops`` are datagrams the receiving socket dropped because the sink
    fell behind (the machine, not the link); they are part of ``loss_pct``,
    so a figure with sink drops overstates the link's loss.
    """

    sent: int
    received: int
    loss_pct: float | None
    duplicates: int
    reordered: int
    rate_set_mbit: float
    rate_sent_mbit: float | None
    rate_received_mbit: float | None
    payload: int
    one_way_p50_ms: float | None = None
    one_way_p99_ms: float | None = None
    send_errors: int = 0
    sink_drops: int = 0
    seconds: float = 0.0

    @classmethod
    def from_tools(cls, sink: dict[str, Any], blast: dict[str, Any]) -> LossResult:
        if sink.get("received") and sink.get("nonce") != blast["nonce"]:
            raise MeasurementError("udp-sink counted another sender's datagrams")
        received = sink.get("received", 0)
        one_way = sink.get("one_way") or {}
        return cls(sent=blast["sent"], received=received,
                   loss_pct=loss_percent(blast["sent"], received),
                   duplicates=sink.get("duplicates", 0), reordered=sink.get("reordered", 0),
                   rate_set_mbit=blast["rate_set_mbit"], rate_sent_mbit=blast["rate_mbit"],
                   rate_received_mbit=sink.get("rate_mbit"), payload=blast["payload"],
                   one_way_p50_ms=one_way.get("p50_ms"), one_way_p99_ms=one_way.get("p99_ms"),
                   send_errors=blast.get("send_errors", 0),
                   sink_drops=sink.get("socket_drops", 0), seconds=blast.get("seconds", 0.0))


@dataclass(frozen=True)
class LoadedRtt(_Result):
    """RTT while a paced UDP load ran the same way (``load``: what it sent and lost)."""

    rtt: RttResult
    load: LossResult


@dataclass(frozen=True)
class SaturatedRtt(_Result):
    """RTT while one bulk TCP stream filled the link, and that stream's goodput."""

    rtt: RttResult
    goodput: GoodputResult


# ------------------------------------------------------------- tool processes

class ToolProcess(JsonLinesChild):
    """One ``tools.py`` endpoint process: a ``JsonLinesChild`` named by its mode.

    A server is started with ``start(READY_TIMEOUT_S)`` (it announces
    ``ready``), a client with ``spawn()``.  ``result()`` waits for the
    process's one result and reaps it; ``stop()`` asks a server for its
    result first.  Leaving ``async with`` kills whatever still runs.
    """

    def __init__(self, netns: str | None, mode: str, *args: Any,
                 registry: Registry | None = None, python: str = sys.executable) -> None:
        self.netns, self.mode = netns, mode
        argv = module_argv("wanmig.wan.tools", [mode, *map(str, args)], python=python,
                           netns=netns, owner=owner_of(registry))
        super().__init__(argv, name=f"{mode} in {netns}" if netns else mode,
                         error=MeasurementError, registry=registry, log=log)

    async def result(self, timeout: float) -> dict[str, Any]:
        """The process's result line; it is reaped whatever happens."""
        return strip_event(await self.finish("result", timeout, last_line=None))

    async def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Ask a server to finish (``stop`` + EOF on stdin) and return its result."""
        return strip_event(await self.finish("result", timeout))


# ---------------------------------------------------------------- measurements

async def _together(*aws: Awaitable[Any]) -> list[Any]:
    """Await all; on the first failure cancel the rest (and wait for them), then raise it."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _ping_args(ip_b: str, rate_hz: float, seconds: float) -> list[Any]:
    return ["--target", ip_b, "--port", ECHO_PORT, "--rate-hz", f"{rate_hz:g}",
            "--seconds", f"{seconds:g}"]


def _ping_timeout(seconds: float) -> float:
    return seconds + 5.0 + 2.0 + RESULT_MARGIN_S  # + warm-up timeout + drain


async def rtt(ns_a: str | None, ns_b: str | None, ip_b: str, *, rate_hz: float = 200.0,
              seconds: float = 5.0, registry: Registry | None = None) -> RttResult:
    """RTT of ``rate_hz`` paced UDP pings from A to B for ``seconds`` (after a warm-up)."""
    async with ToolProcess(ns_b, "udp-echo", "--port", ECHO_PORT, "--bind", ip_b,
                           registry=registry) as echo, \
            ToolProcess(ns_a, "udp-ping", *_ping_args(ip_b, rate_hz, seconds),
                        registry=registry) as ping:
        await echo.start(READY_TIMEOUT_S)
        await ping.spawn()
        result = await ping.result(_ping_timeout(seconds))
        await echo.stop()
    return RttResult.from_tool(result)


async def goodput(ns_a: str | None, ns_b: str | None, ip_b: str, *, seconds: float,
                  rate_mbit: float | None, rtt_ms: float, queue_ms: float = 0.0,
                  cc: str | None = None, skip_s: float | None = None,
                  registry: Registry | None = None) -> GoodputResult:
    """One bulk TCP stream A -> B for ``skip`` + ``seconds``; goodput over the last ``seconds``.

    Buffers are sized from the link's figures (``socket_buffer_bytes``);
    ``skip_s`` defaults to ``tcp_warmup_s``.
    """
    skip = tcp_warmup_s(rtt_ms, queue_ms) if skip_s is None else skip_s
    buf = socket_buffer_bytes(rate_mbit, rtt_ms, queue_ms)
    async with _TcpStream(ns_a, ns_b, ip_b, skip + seconds, skip, buf, cc, registry) as stream:
        return await stream.result()


class _ToolPair:
    """A sink in B and a sender in A, started sink first and always both killed."""

    sink: ToolProcess
    sender: ToolProcess

    async def __aenter__(self) -> Self:
        try:
            await self.sink.start(READY_TIMEOUT_S)
            await self.sender.spawn()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sender.kill()
        await self.sink.kill()


class _TcpStream(_ToolPair):
    """tcp-sink in B and tcp-source in A, started together; ``result()`` waits for both."""

    def __init__(self, ns_a: str | None, ns_b: str | None, ip_b: str, seconds: float,
                 skip: float, buf: int, cc: str | None, registry: Registry | None) -> None:
        self.seconds = seconds
        self.sink = ToolProcess(ns_b, "tcp-sink", "--port", TCP_SINK_PORT, "--bind", ip_b,
                                "--rcvbuf", buf, "--skip", f"{skip:g}", registry=registry)
        source_args: list[Any] = ["--target", ip_b, "--port", TCP_SINK_PORT,
                                  "--seconds", f"{seconds:g}", "--sndbuf", buf]
        if cc:
            source_args += ["--cc", cc]
        self.sender = ToolProcess(ns_a, "tcp-source", *source_args, registry=registry)

    async def result(self) -> GoodputResult:
        source = await self.sender.result(self.seconds + RESULT_MARGIN_S)
        # the sink ends at the stream's end: it still has the sender's buffer to drain
        sink = await self.sink.result(RESULT_MARGIN_S)
        if not sink.get("connected"):
            raise MeasurementError("tcp-sink: no connection arrived")
        return GoodputResult.from_tools(sink, source)


class _UdpLoad(_ToolPair):
    """udp-sink in B and udp-blast in A; ``result()`` waits, drains, stops the sink."""

    def __init__(self, ns_a: str | None, ns_b: str | None, ip_b: str, *, rate_mbit: float,
                 seconds: float, payload: int, count: int | None, drain_s: float,
                 registry: Registry | None) -> None:
        self.seconds, self.drain_s = seconds, drain_s
        self.sink = ToolProcess(ns_b, "udp-sink", "--port", UDP_SINK_PORT, "--bind", ip_b,
                                registry=registry)
        args: list[Any] = ["--target", ip_b, "--port", UDP_SINK_PORT, "--rate-mbit",
                           f"{rate_mbit:g}", "--seconds", f"{seconds:g}", "--size", payload]
        if count is not None:
            args += ["--count", count]
        self.sender = ToolProcess(ns_a, "udp-blast", *args, registry=registry)

    async def result(self) -> LossResult:
        blast = await self.sender.result(self.seconds + RESULT_MARGIN_S)
        await asyncio.sleep(self.drain_s)  # the last datagrams are still on the link
        sink = await self.sink.stop()
        return LossResult.from_tools(sink, blast)


async def loss(ns_a: str | None, ns_b: str | None, ip_b: str, *, rate_mbit: float,
               seconds: float, packets: int | None = None, payload: int = LOSS_PAYLOAD,
               drain_s: float = 1.0, registry: Registry | None = None) -> LossResult:
    """One-way loss A -> B: ``packets`` small datagrams (or ``rate_mbit``) over ``seconds``.

    Keep ``rate_mbit`` modest against the link rate, so that a queue never
    overflows: loss measured then is the link's own.  The blaster starts once
    the sink has answered it (a cold path drops datagrams waiting for ARP);
    ``drain_s`` covers the one-way delay of the last datagrams.
    """
    async with _UdpLoad(ns_a, ns_b, ip_b, rate_mbit=rate_mbit, seconds=seconds, payload=payload,
                        count=packets, drain_s=drain_s, registry=registry) as load:
        result = await load.result()
    if result.sink_drops:
        log.warning("loss figure overstated: the sink dropped %d of %d datagrams itself",
                    result.sink_drops, result.sent)
    return result


async def loaded_rtt(ns_a: str | None, ns_b: str | None, ip_b: str, *, load_mbit: float,
                     rate_hz: float = 200.0, seconds: float = 5.0, drain_s: float = 1.0,
                     registry: Registry | None = None) -> LoadedRtt:
    """RTT A -> B while a paced UDP load of ``load_mbit`` (full-size datagrams) runs A -> B."""
    load_seconds = LOAD_LEAD_S + seconds + 1.0  # the pings start late and drain
    async with ToolProcess(ns_b, "udp-echo", "--port", ECHO_PORT, "--bind", ip_b,
                           registry=registry) as echo, \
            ToolProcess(ns_a, "udp-ping", *_ping_args(ip_b, rate_hz, seconds),
                        registry=registry) as ping:
        await echo.start(READY_TIMEOUT_S)
        async with _UdpLoad(ns_a, ns_b, ip_b, rate_mbit=load_mbit, seconds=load_seconds,
                            payload=1472, count=None, drain_s=drain_s,
                            registry=registry) as load:
            await asyncio.sleep(LOAD_LEAD_S)
            await ping.spawn()
            ping_result, load_result = await _together(ping.result(_ping_timeout(seconds)),
                                                       load.result())
        await echo.stop()
    return LoadedRtt(RttResult.from_tool(ping_result), load_result)


async def saturated_rtt(ns_a: str | None, ns_b: str | None, ip_b: str, *,
                        rate_mbit: float | None, rtt_ms: float, queue_ms: float = 0.0,
                        seconds: float = 5.0, rate_hz: float = 200.0, cc: str | None = None,
                        registry: Registry | None = None) -> SaturatedRtt:
    """RTT A -> B while one bulk TCP stream A -> B fills the link; and its goodput.

    The stream runs ``tcp_warmup_s`` + ``seconds`` + 1 s; the pings start
    once it is past its warm-up and run ``seconds``.  Goodput is measured
    over the same steady part.
    """
    skip = tcp_warmup_s(rtt_ms, queue_ms)
    buf = socket_buffer_bytes(rate_mbit, rtt_ms, queue_ms)
    async with ToolProcess(ns_b, "udp-echo", "--port", ECHO_PORT, "--bind", ip_b,
                           registry=registry) as echo, \
            ToolProcess(ns_a, "udp-ping", *_ping_args(ip_b, rate_hz, seconds),
                        registry=registry) as ping:
        await echo.start(READY_TIMEOUT_S)
        async with _TcpStream(ns_a, ns_b, ip_b, skip + seconds + 1.0, skip, buf, cc,
                              registry) as stream:
            await asyncio.sleep(skip)
            await ping.spawn()
            ping_result, put = await _together(ping.result(_ping_timeout(seconds)),
                                               stream.result())
        await echo.stop()
    return SaturatedRtt(RttResult.from_tool(ping_result), put)
