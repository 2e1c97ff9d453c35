"""ProbeReport: JSON round-trip and tolerance of agent output (pure, fast)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wanmig.probe import ProbeReport


def _report(**overrides: Any) -> ProbeReport:
    fields: dict[str, Any] = dict(
        udp_sent=1000, udp_received=990, udp_lost=10, udp_rtt_p50_ms=0.05,
        udp_rtt_p99_ms=0.2, udp_max_gap_ms=312.5, udp_max_gap_start_ms=1500.0,
        tcp_survived=True, tcp_echoes=100, tcp_max_gap_ms=320.0, tcp_error=None,
        http_ok=20, http_failed=1, http_max_gap_ms=400.0, http_latency_p50_ms=1.2,
        http_latency_max_ms=2000.0, marks={"migrate": 1000.0, "switchover": 1490.0},
        duration_ms=3000.0)
    fields.update(overrides)
    return ProbeReport(**fields)


def test_round_trip_through_json() -> None:
    report = _report(agent_cpu_pct=7.5, udp_send_late_p99_ms=0.2)
    again = ProbeReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report


def test_round_trip_with_nones() -> None:
    report = _report(udp_rtt_p50_ms=None, udp_rtt_p99_ms=None, tcp_survived=False,
                     tcp_error="connection closed by the peer", http_latency_p50_ms=None,
                     http_latency_max_ms=None, marks={})
    assert ProbeReport.from_dict(report.to_dict()) == report


def test_from_dict_ignores_event_and_unknown_keys() -> None:
    data = {"event": "report", "from_the_future": 1, **_report().to_dict()}
    assert ProbeReport.from_dict(data) == _report()


def test_from_dict_names_missing_fields() -> None:
    data = _report().to_dict()
    del data["udp_sent"], data["tcp_survived"]
    with pytest.raises(ValueError, match="udp_sent, tcp_survived"):
        ProbeReport.from_dict(data)


def test_optional_quality_fields_may_be_absent() -> None:
    data = _report().to_dict()
    for key in ("agent_cpu_pct", "udp_send_late_p99_ms", "udp_send_late_max_ms",
                "udp_max_gap_end_ms", "marks", "duration_ms"):
        del data[key]
    report = ProbeReport.from_dict(data)
    assert report.agent_cpu_pct is None and report.marks == {}


def test_gap_relative_to_marks() -> None:
    report = _report()
    assert report.client_outage_ms == 312.5
    assert report.udp_max_gap_vs_marks() == {"migrate": 500.0, "switchover": 10.0}
    assert report.udp_max_gap_after_mark() == ("switchover", 10.0)


def test_is_frozen() -> None:
    with pytest.raises(AttributeError):
        _report().udp_sent = 1  # type: ignore[misc]


def test_lost_echoes_between_two_instants() -> None:
    # 10 echoes lost 5 ms apart from 1000 ms, one at 3000 ms
    report = _report(udp_loss_bursts=[[1000.0, 1045.0, 10], [3000.0, 3000.0, 1]])
    assert report.udp_lost_between(0, 5000) == 11
    assert report.udp_lost_between(1020, 2000) == 6          # 1020 to 1045: part of a burst
    assert report.udp_lost_between(1020, 5000) == 7
    assert report.udp_lost_between(2000, 2999) == 0
    assert report.udp_lost_between(3000, 3000) == 1          # a single echo, on the edge
    assert ProbeReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
