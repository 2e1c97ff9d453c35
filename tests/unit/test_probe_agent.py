"""Pure parts of the probe agent and controller: scheduling, parsing, commands."""

from __future__ import annotations

import io
import json

import pytest

from wanmig.probe import ClientProbe, ProbeState, agent_argv
from wanmig.probe.agent import Agent, parse_args
from wanmig.probe.probes import HttpLoop, HttpResult, UdpEcho, _next_slot, parse_http_head

MS = 1_000_000


def test_next_slot_on_time_keeps_the_grid() -> None:
    assert _next_slot(10 * MS, 10 * MS + 50_000, MS) == 11 * MS


def test_next_slot_skips_missed_slots_without_burst() -> None:
    # woken 3.5 intervals late: the next send is the next grid point after now
    assert _next_slot(10 * MS, 13 * MS + MS // 2, MS) == 14 * MS
    assert _next_slot(10 * MS, 11 * MS, MS) == 12 * MS


def test_parse_head() -> None:
    head = b"HTTP/1.0 200 OK\r\nServer: x\r\nContent-Length: 3"
    assert parse_http_head(head) == (200, 3)
    assert parse_http_head(b"HTTP/1.1 503 Busy") == (503, None)
    assert parse_http_head(b"garbage") == (None, None)


def test_agent_argv_plain_and_in_netns() -> None:
    argv = agent_argv("10.0.0.2", netns=None, udp_port=7, tcp_port=9, http_port=80,
                      interval_ms=1.0, python="/py", ready_timeout=29.0)
    assert argv[:3] == ["/py", "-m", "wanmig.probe.agent"]
    args = parse_args(argv[3:])
    assert (args.target, args.udp_port, args.tcp_port, args.http_port) == ("10.0.0.2", 7, 9, 80)
    assert args.interval_ms == 1.0 and args.ready_timeout == 29.0 and args.rt_priority == 10
    wrapped = agent_argv("10.0.0.2", netns="wm-c", udp_port=7, tcp_port=7, http_port=80,
                         interval_ms=0.5, python="/py", ready_timeout=5, owner="/run/x")
    assert wrapped[:4] == ["ip", "netns", "exec", "wm-c"]
    assert parse_args(wrapped[7:]).owner == "/run/x"


def test_parse_args_rejects_bad_interval() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--target", "1.2.3.4", "--interval-ms", "0"])


def _agent() -> tuple[Agent, io.StringIO]:
    out = io.StringIO()
    return Agent(parse_args(["--target", "127.0.0.1"]), out), out


def _events(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_agent_mark_and_unknown_commands() -> None:
    agent, out = _agent()  # probes constructed, not started: no traffic
    assert agent.handle("mark switchover\n")
    assert agent.handle("mark\n")
    assert agent.handle("frobnicate\n")
    assert agent.handle("\n")
    assert not agent.handle("stop\n")
    events = _events(out)
    assert events[0]["event"] == "marked" and events[0]["name"] == "switchover"
    assert agent.marks == {"switchover": events[0]["t_ms"]}
    assert [e["event"] for e in events[1:]] == ["error", "error"]
    assert all(e["fatal"] is False for e in events[1:])


def test_controller_is_idle_until_started() -> None:
    probe = ClientProbe("10.0.0.2", netns="wm-c")
    assert probe.state is ProbeState.IDLE
    assert repr(probe) == "ClientProbe(target='10.0.0.2', netns='wm-c', state=idle, pid=None)"


async def test_controller_refuses_commands_when_not_running() -> None:
    from wanmig.errors import ProbeError
    probe = ClientProbe("10.0.0.2")
    with pytest.raises(ProbeError, match="idle"):
        await probe.mark("x")
    with pytest.raises(ProbeError, match="idle"):
        await probe.stop()


def test_udp_loss_bursts_are_runs_of_unanswered_echoes() -> None:
    echo = UdpEcho("127.0.0.1", 7, 5 * MS, t0=0)
    echo.first_seq, echo.sent = 2, 12
    echo.sent_ns.extend(seq * 5 * MS for seq in range(12))
    echo.seen.extend(bytes([0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0]))
    # seqs 0-1 came before the first reply (warm-up), 11 was never answered
    assert echo.loss_bursts() == [[20.0, 30.0, 3], [40.0, 40.0, 1], [55.0, 55.0, 1]]


def test_http_attempts_slower_than_a_second_count_as_failed_for_a_short_timeout() -> None:
    loop = HttpLoop("127.0.0.1", 80, t0=0, timeout_s=2.0)
    loop._record(HttpResult(ok=False, ms=2000.0, error="timeout"), now=1)  # warm-up
    for ms in (5.0, 1200.0, 30.0):
        loop._record(HttpResult(ok=True, ms=ms, error=None), now=2)
    loop._record(HttpResult(ok=False, ms=2000.0, error="timeout"), now=3)
    summary = loop.summary()
    assert (summary["http_ok"], summary["http_failed"], summary["http_failed_1s"]) == (3, 1, 2)
