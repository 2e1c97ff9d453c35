"""The pure parts of ``wanmig bench memory``: the matrix, the checks on medians, and the
TCG floor's calibration (``bench.floor``) as far as it is pure."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from wanmig.bench.floor import FloorCycle, FloorResult, check_floor_options, cycle_of
from wanmig.bench.memory import FIGURES, Case, evaluate_checks, plan_cases
from wanmig.bench.runner import summarise
from wanmig.cli import app
from wanmig.errors import ConfigError
from wanmig.parts import MEMORY
from wanmig.probe import ProbeWindow
from wanmig.probe.agent import Agent, parse_args
from wanmig.probe.probes import UdpEcho
from wanmig.report import render_bench

OVER_RTT = "auto outage - TCG floor <= RTT + 100 ms"


def test_bench_matrix_and_tls_pair() -> None:
    cases = plan_cases()
    strategies = MEMORY.names(implemented=True)
    assert len(cases) == len(strategies) * 5 + 2
    assert [c.strategy for c in cases[::5]][:len(strategies)] == list(strategies)
    assert cases[-2:] == [Case("precopy", "idle", tls=False), Case("auto", "idle", verify=False)]
    assert all(c.scenario(60)["memory"]["verify"] for c in cases[:-1])
    assert cases[-1].name == "auto/idle/unverified"
    assert cases[-1].scenario(60)["memory"]["verify"] is False
    assert plan_cases(["auto"], ["web"]) == [Case("auto", "web")]
    assert plan_cases(["auto"], ["web"], profile="metro")[0].labels == {
        "strategy": "auto", "workload": "web", "tls": True, "verify": True, "profile": "metro"}


def test_unknown_strategies_and_workloads_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="^workload: unknown workload 'busy'"):
        plan_cases(workloads=["busy"])
    with pytest.raises(ConfigError, match="^strategy: unknown memory strategy 'fast'; known: "):
        plan_cases(["fast"])


def _rec(strategy: str, workload: str, *, status: str = "completed", converged: bool = True,
         outage: float = 100.0, total: float = 10_000.0, bytes_: int = 100, tls: bool = True,
         predicted: float | None = None, repeat: int = 0, floor: float | None = None) -> dict:
    memory = {"converged": converged, "total_ms": total, "bytes": bytes_}
    if predicted is not None:
        memory["decision"] = {"predicted": {"total_ms": predicted}}
    return {"status": status, "memory": memory,
            "network": {"client_outage_ms": outage, "tcg_floor_ms": floor},
            "wan": {"rtt_measured_ms": 50.0},
            "bench": {"case": Case(strategy, workload, tls).name, "repeat": repeat,
                      "strategy": strategy, "workload": workload, "tls": tls}}


def _checks(records: list[dict]) -> dict[str, bool | None]:
    return {c["check"]: c["ok"] for c in evaluate_checks(summarise(records, FIGURES))}


def test_checks_pass_and_fail_on_the_figures() -> None:
    by_name = _checks([
        _rec("precopy", "web", bytes_=1000), _rec("precopy-tuned", "web", bytes_=500),
        _rec("auto", "web", outage=140, total=10_000, predicted=12_000),
        _rec("precopy", "dirty-50", status="rolled_back", converged=False),
        _rec("auto", "dirty-50", outage=1200, predicted=20_000, total=10_000),
        _rec("precopy", "idle", total=10_000), _rec("precopy", "idle", total=10_500, tls=False),
    ])
    assert by_name["auto completes web"] is True
    assert by_name[f"{OVER_RTT} (web)"] is True
    assert by_name["auto total predicted within ±25% (web)"] is True
    assert by_name["auto outage <= 1000 ms where precopy did not converge (dirty-50)"] is False
    assert by_name["auto total predicted within ±25% (dirty-50)"] is False
    assert by_name["precopy-tuned bytes <= 0.5 x precopy (web)"] is True
    # no record compared its memory: the never-traded target cannot pass on nothing
    assert by_name["0 memory mismatches in every verified run"] is False
    assert by_name["TLS costs <= 10% of total time (precopy/idle)"] is True


def test_checks_read_the_medians_of_the_repeats() -> None:
    # one bad outage of three does not fail the target; two do
    outages = [130.0, 400.0, 140.0]
    one_bad = [_rec("auto", "web", outage=o, repeat=i) for i, o in enumerate(outages)]
    assert _checks(one_bad)[f"{OVER_RTT} (web)"] is True
    two_bad = [_rec("auto", "web", outage=o, repeat=i) for i, o in enumerate([400.0, 300.0, 140.0])]
    assert _checks(two_bad)[f"{OVER_RTT} (web)"] is False
    # precopy that converged in two runs of three counts as converging: no cap check
    runs = [_rec("precopy", "dirty-20", converged=c, repeat=i)
            for i, c in enumerate([True, False, True])] + [_rec("auto", "dirty-20")]
    assert not any("did not converge" in name for name in _checks(runs))
    # a run that rolled back in two of three: auto does not complete
    auto = [_rec("auto", "idle", status=s, repeat=i)
            for i, s in enumerate(["rolled_back", "completed", "rolled_back"])]
    detail = {c["check"]: c["detail"] for c in evaluate_checks(summarise(auto, FIGURES))}
    assert _checks(auto)["auto completes idle"] is False
    assert detail["auto completes idle"] == "did not complete (median of 3 runs)"


def test_figures_of_a_record() -> None:
    rec = _rec("auto", "web", bytes_=2048, predicted=9_000)
    rec["memory"]["wire_bytes"] = 1024
    figures = {name: get(rec) for name, get in FIGURES.items()}
    assert figures == {"completed": 1.0, "converged": 1.0, "total_ms": 10_000.0,
                       "downtime_ms": None, "outage_ms": 100.0, "floor_ms": None,
                       "outage_over_floor_ms": None, "bytes": 2048,
                       "wire_bytes": 1024, "predicted_total_ms": 9_000, "rtt_ms": 50.0,
                       "rounds": None, "postcopy_requests": None, "verify_ms": None,
                       "net_outage_ms": 100.0, "predicted_outage_ms": None,
                       "memory_mismatch": None, "guest_memory_errors": None,
                       "held_ms": None, "answer_ms": None}
    rec["integrity"] = {"memory_match": False, "memory_verify_ms": 30.0,
                        "guest_memory_errors": 0}
    assert FIGURES["net_outage_ms"](rec) == 70.0 and FIGURES["memory_mismatch"](rec) == 1.0
    # the switchover's steps: STOP to RESUME less the verify pause, RESUME to the answer
    rec["switchover_timeline"] = {"client_gap_start": -2.0, "pre_switchover": 1.5,
                                  "resume": 250.0, "client_gap_end": 310.5}
    assert FIGURES["held_ms"](rec) == 220.0 and FIGURES["answer_ms"](rec) == 60.5
    # a larger gap elsewhere in the run is not the switchover's answer
    rec["switchover_timeline"].update(client_gap_start=5000.0, client_gap_end=5400.0)
    assert FIGURES["answer_ms"](rec) is None
    # without a wire count: the stream's own
    del rec["memory"]["wire_bytes"]
    assert FIGURES["wire_bytes"](rec) == 2048


# -------------------------------------------------------------- the TCG floor

def test_the_memory_targets_read_every_run_and_the_verify_pause() -> None:
    def verified(rec: dict, match: bool, verify_ms: float = 40.0, errors: int = 0) -> dict:
        rec["integrity"] = {"memory_match": match, "memory_verify_ms": verify_ms,
                            "guest_memory_errors": errors}
        return rec

    runs = [verified(_rec("auto", "idle", outage=200, repeat=i), True) for i in range(3)]
    unverified = _rec("auto", "idle", outage=150)
    unverified["bench"]["case"] = "auto/idle/unverified"
    good = _checks(runs + [unverified])
    assert good["0 memory mismatches in every verified run"] is True
    assert good["0 guest memory errors"] is True
    assert good["outage less the verify pause matches an unverified run (auto/idle)"] is True
    # one mismatch in one of three runs fails it, whatever the median says
    runs[1] = verified(_rec("auto", "idle", outage=200, repeat=1), False)
    assert _checks(runs)["0 memory mismatches in every verified run"] is False
    runs[1] = verified(_rec("auto", "idle", outage=200, repeat=1), True, errors=2)
    assert _checks(runs)["0 guest memory errors"] is False


def test_the_outage_target_reads_the_outage_less_the_floor() -> None:
    # RTT 50 ms: bound 150 ms; 240 ms of outage fails raw, passes less a 100 ms floor
    with_floor = [_rec("auto", "idle", outage=240.0, floor=100.0)]
    assert _checks(with_floor)[f"{OVER_RTT} (idle)"] is True
    assert _checks([_rec("auto", "idle", outage=240.0, floor=60.0)])[f"{OVER_RTT} (idle)"] is False
    detail = {c["check"]: c["detail"] for c in evaluate_checks(summarise(with_floor, FIGURES))}
    assert detail[f"{OVER_RTT} (idle)"] == (
        "outage 240.0 ms - floor 100.0 ms = 140.0 ms, bound 150.0 ms")
    # no calibration (--floor-cycles 0): the raw outage, and the detail says so
    raw = [_rec("auto", "idle", outage=240.0)]
    assert _checks(raw)[f"{OVER_RTT} (idle)"] is False
    detail = {c["check"]: c["detail"] for c in evaluate_checks(summarise(raw, FIGURES))}
    assert detail[f"{OVER_RTT} (idle)"] == "outage 240.0 ms (no floor measured), bound 150.0 ms"


def test_floor_figures_of_a_record() -> None:
    rec = _rec("auto", "web", outage=180.5, floor=42.25)
    assert FIGURES["floor_ms"](rec) == 42.25
    assert FIGURES["outage_over_floor_ms"](rec) == 138.25
    rec["network"]["client_outage_ms"] = None
    assert FIGURES["outage_over_floor_ms"](rec) is None


def _cycle(gap: float, paused: float, gap_start_ms: float | None = 49_000.5) -> FloorCycle:
    # controller clock: stop sent at 50 s; the probe's clock is 1 s behind it
    return cycle_of(nominal_pause_ms=300.0, stop_ts=1000.0, resume_ts=1000.0 + paused / 1000,
                    gap_ms=gap, stop_sent=50.0, stop_done=50.002, cont_sent=50.302,
                    cont_done=50.3035, resume_at=50.303, gap_start_ms=gap_start_ms,
                    probe_offset_ms=1_000.0)


def test_a_cycle_is_the_gap_less_the_time_qemu_was_paused() -> None:
    c = _cycle(gap=345.0, paused=301.5)
    assert c.paused_ms == pytest.approx(301.5) and c.floor_ms == pytest.approx(43.5)
    assert (c.stop_ms, c.cont_ms) == (pytest.approx(2.0), pytest.approx(1.5))
    assert c.commands_paused_ms == pytest.approx(301.5)
    # the gap began 0.5 ms after stop was sent (probe clock + offset = controller clock)
    # and ended 345.5 - 303 ms after RESUME arrived
    assert c.gap_vs_stop_ms == pytest.approx(0.5)
    assert c.reply_after_resume_ms == pytest.approx(42.5)
    assert c.valid
    # no reply in the window, or a stall elsewhere that was longer: not the pause's gap
    assert not (none := _cycle(gap=0.0, paused=300.0, gap_start_ms=None)).valid
    assert none.gap_vs_stop_ms is None and none.reply_after_resume_ms is None
    stall = _cycle(gap=650.0, paused=300.0, gap_start_ms=48_000.0)   # ended before the stop
    assert not stall.valid and stall.gap_vs_stop_ms == pytest.approx(-1000.0)
    assert _cycle(gap=330.0, paused=300.0, gap_start_ms=49_160.0).valid is False  # began late


def test_the_floor_is_the_median_of_the_cycles_and_round_trips() -> None:
    result = FloorResult(cycles=tuple(_cycle(300.0 + f, 300.0) for f in (40, 55, 38, 61, 44)),
                         pause_ms=300.0, accel="tcg", profile="continental", ram_mib=512,
                         run_id="abc123", seconds=61.5)
    assert result.floor_ms == pytest.approx(44.0)
    assert result.floor["min"] == pytest.approx(38.0) and result.floor["n"] == 5
    data = json.loads(json.dumps(result.to_dict()))
    assert data["floor_ms"] == pytest.approx(44.0) and data["paused"]["median"] == 300.0
    assert FloorResult.from_dict(data) == result
    assert FloorResult(cycles=(), pause_ms=300.0).floor_ms is None
    # a cycle whose gap was not the pause's is kept, not counted
    stalled = FloorResult(cycles=(*result.cycles, _cycle(900.0, 300.0, gap_start_ms=48_000.0)),
                          pause_ms=300.0)
    assert stalled.floor_ms == pytest.approx(44.0) and stalled.floor["n"] == 5
    assert len(FloorResult.from_dict(stalled.to_dict()).cycles) == 6


@pytest.mark.parametrize(("cycles", "pause_ms", "message"), [
    (0, 300.0, "cycles: must be a whole number of cycles, at least 1 (got 0)"),
    (True, 300.0, "cycles: must be a whole number"),
    (2.5, 300.0, "cycles: must be a whole number"),
    (3, 10.0, "pause_ms: must be within 50..5000 ms (got 10)"),
])
def test_floor_options_are_checked(cycles: object, pause_ms: float, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        check_floor_options(cycles, pause_ms)  # type: ignore[arg-type]
    check_floor_options(5, 300.0)


@pytest.mark.parametrize(("args", "message"), [
    (["memory", "--floor-cycles", "-1"], "floor_cycles: must be a whole number of cycles"),
    (["floor", "--cycles", "0"], "cycles: must be a whole number of cycles"),
    (["floor", "--pause-ms", "5"], "pause_ms: must be within 50..5000 ms"),
    (["floor", "--wan", "moon"], "unknown profile 'moon'"),
])
def test_bad_floor_options_exit_2_before_anything_starts(args: list[str], message: str,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    result = CliRunner().invoke(app, ["bench", *args, "--json", str(out)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def _text(doc: dict) -> str:
    console = Console(file=io.StringIO(), width=240)
    console.print(render_bench(doc))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_table_shows_the_floor_beside_each_outage() -> None:
    floor = FloorResult(cycles=tuple(_cycle(340.0 + f, 300.0) for f in (1.0, 5.0, 3.0)),
                        pause_ms=300.0)
    records = [_rec("auto", "idle", outage=250.0, floor=floor.floor_ms)]
    doc = {"kind": "memory", "settings": {"repeat": 1, "tcg_floor": floor.to_dict()},
           "results": records, "summary": summarise(records, FIGURES), "checks": []}
    text = _text(doc)
    assert "TCG floor 43.0 ms (median of 3 cycles, 41.0–45.0)" in text
    assert "floor ms" in text and "outage-floor ms" in text
    row = next(line for line in text.splitlines() if "auto/idle" in line)
    assert "250" in row and " 43 " in row and "207" in row
    doc["settings"]["tcg_floor"] = None
    assert "TCG floor not measured" in _text(doc)
    # wanmig bench floor's own document
    floor_doc = {"kind": "floor", "settings": {}, "result": floor.to_dict()}
    assert "median 43.0 ms" in _text(floor_doc)
    assert "TCG floor" in _text({"kind": "floor", "settings": {}, "result": None})


# ----------------------------------------- the probe's windows, which the floor reads

def test_a_mark_closes_a_window_with_its_own_largest_gap() -> None:
    ms = 1_000_000
    udp = UdpEcho("127.0.0.1", 7, ms, t0=0)
    for t in (10, 11, 12, 50, 51):   # a 38 ms gap
        udp.window.add(t * ms)
    gap = {k: v for k, v in udp.cut_window(60 * ms).items() if "gap" in k}
    assert gap == {"udp_window_max_gap_ms": 38.0, "udp_window_max_gap_start_ms": 12.0}
    # the next window starts at the last reply before the cut: a gap across it shows whole
    udp.window.add(200 * ms)
    gap = {k: v for k, v in udp.cut_window(201 * ms).items() if "gap" in k}
    assert gap == {"udp_window_max_gap_ms": 149.0, "udp_window_max_gap_start_ms": 51.0}
    # no reply at all since: the open gap, closed at the cut
    assert udp.cut_window(300 * ms)["udp_window_max_gap_ms"] == 100.0
    # nothing ever answered: no start, nothing counted
    fresh = UdpEcho("127.0.0.1", 7, ms, t0=0)
    assert fresh.cut_window(5 * ms) == {"udp_window_max_gap_ms": 0.0,
                                        "udp_window_max_gap_start_ms": None,
                                        "udp_window_sent": 0, "udp_window_received": 0,
                                        "udp_window_rtt_p50_ms": None}


def test_a_window_counts_what_was_sent_and_answered_in_it() -> None:
    ms = 1_000_000
    udp = UdpEcho("127.0.0.1", 7, ms, t0=0)
    # the first reply was to datagram 2: the report counts from there, so does the window
    udp.first_seq, udp.sent = 2, 12
    udp.rtts_ns.extend([3 * ms, 5 * ms, 4 * ms])
    w = udp.cut_window(12 * ms)
    assert (w["udp_window_sent"], w["udp_window_received"], w["udp_window_rtt_p50_ms"]) == (
        10, 3, 4.0)
    # the next window counts only what came after the cut
    udp.sent += 5
    udp.rtts_ns.extend([90 * ms, 110 * ms])
    w = udp.cut_window(17 * ms)
    assert (w["udp_window_sent"], w["udp_window_received"], w["udp_window_rtt_p50_ms"]) == (
        5, 2, 100.0)


def test_the_agent_answers_a_mark_with_its_window() -> None:
    out = io.StringIO()
    agent = Agent(parse_args(["--target", "127.0.0.1"]), out)  # not started: no traffic
    agent.handle("mark floor-0\n")
    event = json.loads(out.getvalue())
    window = ProbeWindow.from_event(event)
    assert window.name == "floor-0" and window.t_ms == agent.marks["floor-0"]
    assert window.udp_max_gap_ms == 0.0 and window.udp_max_gap_start_ms is None
    with pytest.raises(ValueError, match="without its window"):
        ProbeWindow.from_event({"event": "marked", "name": "x", "t_ms": 1.0})
