"""``wanmig bench network``: its matrix, its targets and its table (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from wanmig.bench.network import FIGURES, evaluate_checks, plan_cases
from wanmig.bench.runner import summarise
from wanmig.errors import ConfigError
from wanmig.report import render_bench


def _entry(mode: str, outage: float, *, lost: int = 10, http: int = 0,
           tcp: bool = True) -> dict[str, Any]:
    return {"status": "completed", "bench": {"case": mode},
            "network": {"client_outage_ms": outage, "tcp_survived": tcp, "new_conn_ms": 60.0,
                        "rtt_before_ms": 50.0, "rtt_after_ms": 100.0,
                        "udp_lost_switchover": lost, "udp_lost": lost + 2,
                        "http_failed_1s": http, "probe_interval_ms": 5.0},
            "integrity": {"guest_log_gaps": 0}, "wan": {"rtt_measured_ms": 50.0}}


def _checks(*entries: dict[str, Any]) -> dict[str, bool | None]:
    return {c["check"]: c["ok"] for c in evaluate_checks(summarise(entries, FIGURES))}


def test_plan_is_every_implemented_mode_and_refuses_the_rest() -> None:
    assert [c.mode for c in plan_cases()] == ["l2-extend", "dns-tunnel", "mobile-ip", "route"]
    assert plan_cases()[0].scenario()["wan"] == {"profile": "continental",
                                                "client_profile": "continental"}
    assert plan_cases()[0].scenario()["memory"] == {"strategy": "precopy-tuned"}
    with pytest.raises(ConfigError, match="unknown network mode 'warp'"):
        plan_cases(["warp"])


def test_route_is_held_to_l2_extend_plus_one_rtt() -> None:
    ok = _checks(_entry("l2-extend", 300.0), _entry("route", 340.0))
    assert ok["route: outage <= l2-extend's + one RTT"] is True
    late = _checks(_entry("l2-extend", 300.0), _entry("route", 360.0))
    assert late["route: outage <= l2-extend's + one RTT"] is False
    # without the baseline there is nothing to compare with
    assert "route: outage <= l2-extend's + one RTT" not in _checks(_entry("route", 340.0))


def test_held_frames_and_what_the_client_saw() -> None:
    checks = _checks(_entry("l2-extend", 300.0, lost=61, http=1, tcp=False))
    assert checks["l2-extend: no new HTTP connection over 1 s"] is False
    assert checks["l2-extend: echoes lost around the switchover <= outage / interval"] is False
    assert checks["l2-extend: the long-lived TCP connection survives"] is False
    good = _checks(_entry("l2-extend", 300.0, lost=60))
    assert all(good.values()), good


def test_table_renders_from_the_document_alone() -> None:
    entries = [_entry("l2-extend", 300.0), _entry("route", 340.0)]
    doc = {"kind": "network", "results": entries, "summary": summarise(entries, FIGURES),
           "checks": [], "settings": {"memory": "precopy-tuned", "profile": "continental",
                                      "client_profile": "continental", "repeat": 1}}
    console = Console(width=200, record=True)
    console.print(render_bench(doc))
    text = console.export_text()
    assert "network modes, precopy-tuned memory on continental" in text
    assert "route" in text and "340" in text


def test_dns_tunnel_is_held_to_its_ttl_and_a_second() -> None:
    entry = _entry("dns-tunnel", 300.0)
    entry["network"].update(dns_ttl_s=5, new_conn_ms=5800.0)
    assert _checks(entry)["dns-tunnel: a new connection by name reaches B within the TTL + 1 s"]
    entry["network"]["new_conn_ms"] = 6200.0
    assert not _checks(entry)["dns-tunnel: a new connection by name reaches B within the TTL + 1 s"]
    # no frames to hold: the tunnel carries the old address, DNS the new one
    assert "dns-tunnel: no new HTTP connection over 1 s" not in _checks(entry)
