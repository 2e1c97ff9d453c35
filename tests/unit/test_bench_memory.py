"""The pure parts of ``wanmig bench memory``: the matrix and the checks on medians."""

from __future__ import annotations

import pytest

from wanmig.bench.memory import FIGURES, Case, evaluate_checks, plan_cases
from wanmig.bench.runner import summarise
from wanmig.errors import ConfigError
from wanmig.parts import MEMORY


def test_bench_matrix_and_tls_pair() -> None:
    cases = plan_cases()
    strategies = MEMORY.names(implemented=True)
    assert len(cases) == len(strategies) * 5 + 1
    assert [c.strategy for c in cases[::5]][:len(strategies)] == list(strategies)
    assert cases[-1] == Case("precopy", "idle", tls=False)
    assert plan_cases(["auto"], ["web"]) == [Case("auto", "web")]
    assert plan_cases(["auto"], ["web"], profile="metro")[0].labels == {
        "strategy": "auto", "workload": "web", "tls": True, "profile": "metro"}


def test_unknown_strategies_and_workloads_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="^workload: unknown workload 'busy'"):
        plan_cases(workloads=["busy"])
    with pytest.raises(ConfigError, match="^strategy: unknown memory strategy 'fast'; known: "):
        plan_cases(["fast"])


def _rec(strategy: str, workload: str, *, status: str = "completed", converged: bool = True,
         outage: float = 100.0, total: float = 10_000.0, bytes_: int = 100, tls: bool = True,
         predicted: float | None = None, repeat: int = 0) -> dict:
    memory = {"converged": converged, "total_ms": total, "bytes": bytes_}
    if predicted is not None:
        memory["decision"] = {"predicted": {"total_ms": predicted}}
    return {"status": status, "memory": memory, "network": {"client_outage_ms": outage},
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
    assert by_name["auto outage <= RTT + 100 ms (web)"] is True
    assert by_name["auto prediction within ±25% (web)"] is True
    assert by_name["auto outage <= 1000 ms where precopy did not converge (dirty-50)"] is False
    assert by_name["auto prediction within ±25% (dirty-50)"] is False
    assert by_name["precopy-tuned bytes <= 0.6 x precopy (web)"] is True
    assert by_name["TLS costs <= 10% of total time (precopy/idle)"] is True


def test_checks_read_the_medians_of_the_repeats() -> None:
    # one bad outage of three does not fail the target; two do
    outages = [130.0, 400.0, 140.0]
    one_bad = [_rec("auto", "web", outage=o, repeat=i) for i, o in enumerate(outages)]
    assert _checks(one_bad)["auto outage <= RTT + 100 ms (web)"] is True
    two_bad = [_rec("auto", "web", outage=o, repeat=i) for i, o in enumerate([400.0, 300.0, 140.0])]
    assert _checks(two_bad)["auto outage <= RTT + 100 ms (web)"] is False
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
                       "downtime_ms": None, "outage_ms": 100.0, "bytes": 2048,
                       "wire_bytes": 1024, "predicted_total_ms": 9_000, "rtt_ms": 50.0,
                       "rounds": None, "postcopy_requests": None}
    # QEMU 7.2 without a wire count: the stream's own
    del rec["memory"]["wire_bytes"]
    assert FIGURES["wire_bytes"](rec) == 2048
