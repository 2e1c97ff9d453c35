"""The pure parts of the WAN measurements: statistics, pacing, sizing, results."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from wanmig import registry as registry_module
from wanmig.registry import Registry
from wanmig.wan import measure, tools

MS = 1_000_000
S = 1_000_000_000


# ----------------------------------------------------------------- statistics

def test_summary_of_samples_in_ms() -> None:
    samples = [i * MS for i in range(1, 101)]  # 1..100 ms, shuffled order must not matter
    out = tools.summarize_ms(list(reversed(samples)))
    assert out["count"] == 100
    assert out["p50_ms"] == pytest.approx(50.5)
    assert out["p99_ms"] == pytest.approx(99.01)
    assert out["mean_ms"] == pytest.approx(50.5)
    assert (out["min_ms"], out["max_ms"]) == (1.0, 100.0)


def test_summary_of_nothing_is_none() -> None:
    out = tools.summarize_ms([])
    assert out["count"] == 0 and out["p50_ms"] is None and out["mean_ms"] is None


# --------------------------------------------------------------------- pacing

def test_wire_size_and_packet_rate() -> None:
    assert tools.udp_wire_bytes(1472) == 1514  # a full Ethernet frame without FCS
    # 100 Mbit/s of full frames: 12.5 MB/s / 1514 B
    assert tools.packets_per_second(100, 1472) == pytest.approx(8256.3, rel=1e-4)


def test_pacing_schedule_sends_what_is_due() -> None:
    pps = 1000.0
    assert tools.packets_due(0, pps, 0, 10) == 1          # datagram 0 is due at once
    assert tools.packets_due(999_999, pps, 1, 10) == 0    # datagram 1 is due at 1 ms
    assert tools.packets_due(1 * MS, pps, 1, 10) == 1
    assert tools.packets_due(S, pps, 1001, 10) == 0        # on schedule after 1 s
    assert tools.packets_due(-5, pps, 0, 10) == 0


def test_pacing_forgets_debt_beyond_a_burst() -> None:
    # woke 50 ms late at 1000/s: 50 datagrams owed, only a burst of 5 is sent
    assert tools.packets_due(50 * MS, 1000.0, 1, 5) == 5


def test_pacing_wait_until_next_datagram() -> None:
    assert tools.ns_until_next(0, 1000.0, 1) == 1 * MS
    assert tools.ns_until_next(3 * MS, 1000.0, 2) == 0  # late: no wait


def test_pacing_schedule_reaches_the_rate() -> None:
    """Simulated sender waking every 300 us: it sends exactly pps x time."""
    pps, sent = 41_281.4, 0
    for t in range(0, S, 300_000):
        sent += tools.packets_due(t, pps, sent, 100)
    assert sent == pytest.approx(pps, abs=15)  # 1 s worth, up to one wake-up short


# -------------------------------------------------------------------- goodput

def _timeline(rate_mbit: float, seconds: float, *, slow_s: float = 0.0) -> list[tuple[int, int]]:
    """Cumulative bytes every 10 ms: a tenth of the rate for ``slow_s``, then the rate."""
    points, total = [], 0
    step = 10 * MS
    for i in range(int(seconds * 100) + 1):
        t = i * step
        rate = rate_mbit / 10 if t < slow_s * S else rate_mbit
        if i:
            total += int(rate * 1e6 / 8 * step / S)
        points.append((t, total))
    return points


def test_goodput_over_the_steady_part() -> None:
    tl = _timeline(100, 5.0, slow_s=1.0)
    assert tools.steady_goodput_mbit(tl, skip_ns=1 * S) == pytest.approx(100, rel=1e-3)
    # without the skip, slow start drags the figure down
    assert tools.steady_goodput_mbit(tl, skip_ns=0) == pytest.approx(82, rel=1e-2)


def test_goodput_interpolates_between_timeline_points() -> None:
    tl = [(0, 0), (S, 10_000_000), (2 * S, 20_000_000)]
    assert tools.steady_goodput_mbit(tl, skip_ns=S // 2) == pytest.approx(80.0)


def test_goodput_undefined_when_transfer_shorter_than_skip() -> None:
    assert tools.steady_goodput_mbit([(0, 0), (S, 1000)], skip_ns=2 * S) is None
    assert tools.steady_goodput_mbit([(0, 10)], skip_ns=0) is None


# ----------------------------------------------------------------------- loss

def test_loss_arithmetic() -> None:
    assert measure.loss_percent(50_000, 49_750) == pytest.approx(0.5)
    assert measure.loss_percent(10, 12) == 0.0  # more than sent (duplicates): never negative
    assert measure.loss_percent(0, 0) is None


def test_packets_needed_for_a_loss_figure() -> None:
    # 0.5 % within +/-20 %: 3 sigma needs 44 775, 2 sigma 19 900
    assert measure.loss_packets_needed(0.5) == 44_775
    assert measure.loss_packets_needed(0.5, z=2.0) == 19_900
    # the relative error of the result is what was asked for
    n, p = measure.loss_packets_needed(0.5), 0.005
    assert 3 * math.sqrt((1 - p) / (n * p)) == pytest.approx(0.2, rel=1e-3)
    assert measure.loss_packets_needed(5) < measure.loss_packets_needed(0.5)
    with pytest.raises(ValueError):
        measure.loss_packets_needed(0)


# ----------------------------------------------------------------- TCP sizing

def test_bdp_and_socket_buffers() -> None:
    assert measure.bdp_bytes(100, 50) == 625_000
    # 2 x BDP of set RTT + a full queue: 100 Mbit/s x 70 ms
    assert measure.socket_buffer_bytes(100, 50, 20) == 1_750_000
    assert measure.socket_buffer_bytes(1, 1) == measure.BUFFER_MIN      # floor
    assert measure.socket_buffer_bytes(10_000, 500) == measure.BUFFER_MAX  # cap
    # no rate: sized for UNLIMITED_RATE_MBIT
    assert measure.socket_buffer_bytes(None, 1) == 2 * measure.bdp_bytes(
        measure.UNLIMITED_RATE_MBIT, 1)


def test_tcp_warmup_grows_with_rtt_within_bounds() -> None:
    assert measure.tcp_warmup_s(0.2) == 0.5
    assert measure.tcp_warmup_s(50, 20) == pytest.approx(0.84)
    assert measure.tcp_warmup_s(150, 20) == 2.04
    assert measure.tcp_warmup_s(1000) == 3.0


# -------------------------------------------------------------- tool plumbing

def test_tool_command_line() -> None:
    ping = measure.ToolProcess("wm1-a", "udp-ping", "--target", "10.0.0.2", "--port", 7001,
                               python="py")
    assert ping.argv == ["ip", "netns", "exec", "wm1-a", "py", "-m", "wanmig.wan.tools",
                         "udp-ping", "--target", "10.0.0.2", "--port", "7001"]
    assert repr(ping) == ("ToolProcess('udp-ping in wm1-a', state=idle, pid=None, "
                          "returncode=None)")
    assert measure.ToolProcess(None, "udp-echo", python="py").argv[:1] == ["py"]


def test_a_tool_names_its_run_before_its_mode(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "STATE_DIR", tmp_path)
    reg = Registry("t1")
    argv = measure.ToolProcess(None, "udp-echo", "--port", 7, "--bind", "10.0.0.2",
                               registry=reg, python="py").argv
    assert argv[3:5] == ["--owner", str(reg.run_dir)]
    args = tools.parse_args(argv[3:])  # a sub-command's parser would refuse it after the mode
    assert args.mode == "udp-echo" and args.owner == str(reg.run_dir)


def test_tool_arguments_are_checked() -> None:
    args = tools.parse_args(["udp-blast", "--target", "1.2.3.4", "--port", "9",
                             "--rate-mbit", "50", "--seconds", "2"])
    assert args.mode == "udp-blast" and args.size == tools.MAX_UDP_PAYLOAD
    with pytest.raises(SystemExit):
        tools.parse_args(["udp-ping", "--target", "x", "--port", "1", "--seconds", "0"])


PING_RESULT = {
    "sent": 1000, "received": 998, "lost": 2, "seconds": 5.0, "send_late_p99_ms": 0.05,
    "rtt": {"count": 998, "p50_ms": 50.2, "p90_ms": 50.4, "p99_ms": 50.9, "mean_ms": 50.25,
            "min_ms": 50.05, "max_ms": 52.0},
    "forward": {"p50_ms": 25.1, "p99_ms": 25.6}, "reverse": {"p50_ms": 25.1, "p99_ms": 25.3},
}


def test_results_round_trip() -> None:
    rtt = measure.RttResult.from_tool(PING_RESULT)
    assert rtt.p50_ms == 50.2 and rtt.forward_p50_ms == 25.1
    assert rtt.loss_pct == pytest.approx(0.2)
    put = measure.GoodputResult.from_tools(
        {"goodput_mbit": 95.1, "mean_mbit": 90.0, "bytes": 10, "seconds": 6.0, "skip_s": 1.0,
         "rcvbuf": 2, "connected": True},
        {"sndbuf": 3, "cc": "cubic", "tcp_rtt_ms": 69.0, "tcp_total_retrans": 4})
    sat = measure.SaturatedRtt(rtt, put)
    again = measure.SaturatedRtt.from_dict(sat.to_dict())
    assert again == sat and isinstance(again.goodput, measure.GoodputResult)


def _loss_result(received: int = 49_750, sent: int = 50_000) -> measure.LossResult:
    return measure.LossResult.from_tools(
        {"nonce": 7, "received": received, "duplicates": 0, "reordered": 0, "rate_mbit": 4.9,
         "one_way": {"p50_ms": 40.0, "p99_ms": 40.5}},
        {"nonce": 7, "sent": sent, "rate_set_mbit": 5.0, "rate_mbit": 5.0, "payload": 64})


def test_loss_result_from_the_two_endpoints() -> None:
    lost = _loss_result()
    assert lost.loss_pct == pytest.approx(0.5) and lost.one_way_p50_ms == 40.0
    assert measure.LossResult.from_dict(lost.to_dict()) == lost


def test_loss_result_refuses_another_senders_count() -> None:
    with pytest.raises(measure.MeasurementError):
        measure.LossResult.from_tools({"nonce": 1, "received": 5},
                                      {"nonce": 2, "sent": 5, "rate_set_mbit": 1,
                                       "rate_mbit": 1, "payload": 64})


async def test_together_cancels_the_rest_on_a_failure() -> None:
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def fail() -> None:
        raise measure.MeasurementError("boom")

    with pytest.raises(measure.MeasurementError, match="boom"):
        await measure._together(slow(), fail())
    assert cancelled == [True]
    assert await measure._together(asyncio.sleep(0, "a"), asyncio.sleep(0, "b")) == ["a", "b"]
