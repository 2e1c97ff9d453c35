"""The pure parts of the WAN measurements: statistics, pacing, sizing, checks."""

from __future__ import annotations

import asyncio
import math

import pytest

from wanmig.wan import measure, tools
from wanmig.wan.bench import (
    ENTRY_KEYS,
    LOSS_PROBE_MAX_MBIT,
    cpu_pct,
    evaluate_checks,
    loss_plan,
    make_entry,
    plan_profiles,
    rate_point,
    saturated_bound_ms,
)
from wanmig.wan.profiles import PROFILES, LinkProfile

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
    argv = measure.tool_argv("wm1-a", "udp-ping", ["--target", "10.0.0.2"], python="py",
                             owner="/run/wanmig/x")
    assert argv == ["ip", "netns", "exec", "wm1-a", "py", "-m", "wanmig.wan.tools",
                    "--owner", "/run/wanmig/x", "udp-ping", "--target", "10.0.0.2"]
    assert measure.tool_argv(None, "udp-echo", [], python="py")[:1] == ["py"]


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


# ---------------------------------------------------------------- bench plan

def test_default_plan_is_every_profile_then_rate_points() -> None:
    plan = plan_profiles(None, None)
    assert [p.name for p in plan[:5]] == list(PROFILES)
    assert [(p.rtt_ms, p.rate_mbit) for p in plan[5:]] == [(50, 10), (50, 100), (50, 200)]


def test_plan_with_chosen_profiles_has_no_rate_points_unless_asked() -> None:
    assert [p.name for p in plan_profiles(["lossy"], None)] == ["lossy"]
    custom = {"name": "t", "rtt_ms": 20, "rate_mbit": 50}
    plan = plan_profiles([custom], [10])
    assert plan[0].rtt_ms == 20 and plan[1] == rate_point(10)


def test_saturated_bound_is_rtt_plus_queue_plus_2ms() -> None:
    assert saturated_bound_ms(PROFILES["continental"]) == 50 + 20 + 2
    assert saturated_bound_ms(LinkProfile(rtt_ms=0, rate_mbit=None)) is None


def test_loss_plan_is_sized_for_the_target() -> None:
    lossy = loss_plan(PROFILES["lossy"], seconds=5)
    assert lossy.packets == 44_775 and lossy.rate_mbit == LOSS_PROBE_MAX_MBIT
    pps = tools.packets_per_second(lossy.rate_mbit, measure.LOSS_PAYLOAD)
    assert lossy.seconds == pytest.approx(lossy.packets / pps, abs=0.01)  # ~7.6 s
    slow = loss_plan(rate_point(10), seconds=5)
    assert slow.rate_mbit == pytest.approx(1.0)  # a tenth of a slow link
    assert slow.packets == round(tools.packets_per_second(1.0, measure.LOSS_PAYLOAD) * 5)


# ---------------------------------------------------------------------- checks

def _entry(p: LinkProfile, **figures: float | None) -> dict:
    base = {"rtt_idle_p50_ms": p.rtt_ms, "rtt_loaded_p50_ms": p.rtt_ms,
            "rtt_loaded_p99_ms": p.rtt_ms + 1, "rtt_saturated_p50_ms": p.rtt_ms + p.queue_ms,
            "rtt_saturated_bound_ms": saturated_bound_ms(p),
            "goodput_mbit": (p.rate_mbit or 0) * 0.95, "loss_measured_pct": p.loss_pct}
    return {**base, **figures}


def test_checks_that_apply_per_profile() -> None:
    assert set(evaluate_checks(_entry(PROFILES["continental"]), PROFILES["continental"])) == {
        "rtt_idle_p50", "rtt_loaded_p50", "rtt_loaded_p99", "rtt_saturated_p50", "goodput"}
    assert set(evaluate_checks(_entry(PROFILES["lossy"]), PROFILES["lossy"])) == {
        "rtt_saturated_p50", "loss"}
    assert set(evaluate_checks(_entry(PROFILES["lan"]), PROFILES["lan"])) == {
        "rtt_saturated_p50"}
    assert set(evaluate_checks(_entry(rate_point(200)), rate_point(200))) == {
        "rtt_saturated_p50", "goodput"}


def test_checks_pass_and_fail_at_their_limits() -> None:
    cont = PROFILES["continental"]
    ok = evaluate_checks(_entry(cont, rtt_idle_p50_ms=51.0, rtt_loaded_p99_ms=52.0,
                                rtt_saturated_p50_ms=72.0, goodput_mbit=90.0), cont)
    assert all(ok.values())
    bad = evaluate_checks(_entry(cont, rtt_idle_p50_ms=51.2, rtt_loaded_p99_ms=52.5,
                                 rtt_saturated_p50_ms=72.5, goodput_mbit=89.9), cont)
    assert bad == {"rtt_idle_p50": False, "rtt_loaded_p50": True, "rtt_loaded_p99": False,
                   "rtt_saturated_p50": False, "goodput": False}
    lossy = PROFILES["lossy"]
    assert evaluate_checks(_entry(lossy, loss_measured_pct=0.59), lossy)["loss"]
    assert not evaluate_checks(_entry(lossy, loss_measured_pct=0.61), lossy)["loss"]
    assert not evaluate_checks(_entry(lossy, loss_measured_pct=0.39), lossy)["loss"]


def test_a_missing_figure_fails_its_check() -> None:
    cont = PROFILES["continental"]
    checks = evaluate_checks(_entry(cont, rtt_loaded_p99_ms=None, goodput_mbit=None), cont)
    assert checks["rtt_loaded_p99"] is False and checks["goodput"] is False


def test_entry_has_exactly_the_documented_keys() -> None:
    p = PROFILES["lossy"]
    rtt = measure.RttResult.from_tool(PING_RESULT)
    put = measure.GoodputResult(goodput_mbit=2.5, mean_mbit=2.4, bytes=1, seconds=5,
                                skip_s=1)
    entry = make_entry(p, backend="forwarder", idle=rtt,
                       loaded=measure.LoadedRtt(rtt, _loss_result()),
                       saturated=measure.SaturatedRtt(rtt, put), lost=_loss_result(),
                       cpu_pct=12.5)
    assert tuple(entry) == (*ENTRY_KEYS, "checks")
    assert entry["loss_measured_pct"] == pytest.approx(0.5) and entry["checks"]["loss"]
    assert entry["rtt_saturated_bound_ms"] == 102.0


def test_cpu_percentage_of_one_core() -> None:
    assert cpu_pct(1.0, 3.5, 5.0) == 50.0
    assert cpu_pct(None, 3.5, 5.0) is None
    assert cpu_pct(1.0, 1.0, 0.0) is None


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
