"""The pure parts of ``wanmig bench wan``: the plan, the loss probe, the checks, the entries."""

from __future__ import annotations

import pytest

from wanmig.bench.runner import summarise
from wanmig.bench.wan import (
    CEILING,
    ENTRY_KEYS,
    FIGURES,
    LOSS_PROBE_MAX_MBIT,
    WanCase,
    check_seconds,
    cpu_pct,
    evaluate_checks,
    loss_plan,
    make_entry,
    plan_cases,
    plan_profiles,
    rate_point,
    saturated_bound_ms,
    summary_checks,
)
from wanmig.errors import ConfigError
from wanmig.wan import measure, tools
from wanmig.wan.profiles import PROFILES, LinkProfile

from .test_wan_measure import PING_RESULT, _loss_result


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
    assert tuple(entry) == ENTRY_KEYS
    assert entry["loss_measured_pct"] == pytest.approx(0.5) and evaluate_checks(entry, p)["loss"]
    assert entry["rtt_saturated_bound_ms"] == 102.0


def test_cpu_percentage_of_one_core() -> None:
    assert cpu_pct(1.0, 3.5, 5.0) == 50.0
    assert cpu_pct(None, 3.5, 5.0) is None
    assert cpu_pct(1.0, 1.0, 0.0) is None


def test_cases_are_the_profiles_then_the_ceiling() -> None:
    cases = plan_cases(["continental"], [100])
    assert [c.name for c in cases] == ["continental", "rtt50-100mbit", CEILING]
    assert cases[-1].ceiling and cases[-1].labels == {"ceiling": True}
    assert not cases[0].ceiling and cases[0].labels == {}
    assert [c.name for c in plan_cases(["lan"], None, ceiling=False)] == ["lan"]


def test_unknown_or_twice_named_profiles_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'moon'"):
        plan_cases(["moon"], None)
    with pytest.raises(ConfigError, match="measured twice"):
        plan_cases(["lan", "lan"], None)
    with pytest.raises(ConfigError, match="measured twice"):
        plan_cases([{"name": CEILING, "rtt_ms": 1}], None)


@pytest.mark.parametrize("bad", [0, -1, -0.5, float("nan"), float("inf"), "5"])
def test_seconds_must_be_positive(bad: object) -> None:
    with pytest.raises(ConfigError, match="^seconds: must be a positive"):
        check_seconds(bad)  # type: ignore[arg-type]
    assert check_seconds(2) == 2.0


def _run(p: LinkProfile, repeat: int, **figures: float | None) -> dict:
    return {**_entry(p, **figures), "bench": {"case": p.name, "repeat": repeat}}


def test_goodput_target_is_checked_on_the_median_of_the_streams() -> None:
    cont = PROFILES["continental"]
    # the two figures for one link, and one more: median 92 Mbit/s
    runs = [_run(cont, 0, goodput_mbit=81.0), _run(cont, 1, goodput_mbit=95.0),
            _run(cont, 2, goodput_mbit=92.0)]
    summary = summarise(runs, FIGURES)
    assert summary[0]["runs"] == 3
    assert summary[0]["figures"]["goodput_mbit"] == {"median": 92.0, "min": 81.0, "max": 95.0,
                                                     "n": 3}
    checks = {c["check"]: c for c in summary_checks(summary, {cont.name: cont})}
    assert checks["goodput"]["ok"] is True and checks["goodput"]["case"] == "continental"
    assert checks["goodput"]["detail"] == "goodput_mbit 92.0 (median of 3, 81.0–95.0)"
    # the one slow stream alone would have missed the target
    alone = summary_checks(summarise(runs[:1], FIGURES), {cont.name: cont})
    assert {c["check"]: c["ok"] for c in alone}["goodput"] is False


def test_the_ceiling_has_figures_but_no_targets() -> None:
    ceiling = {"profile": CEILING, "backend": "forwarder", "goodput_mbit": 900.0,
               "cpu_pct": 80.0, "bench": {"case": CEILING, "repeat": 0, "ceiling": True}}
    summary = summarise([ceiling], FIGURES)
    assert summary[0]["figures"]["goodput_mbit"]["median"] == 900.0
    assert summary[0]["figures"]["rtt_idle_p50_ms"]["n"] == 0
    assert summary_checks(summary, {}) == []


def test_a_case_is_named_after_its_profile() -> None:
    assert WanCase(rate_point(10)).name == "rtt50-10mbit"
