"""The web load's pure parts, and its HTTP client against servers on loopback.

The tally and report are checked on synthetic outcomes; ``Request`` and the
agent's schedule against small asyncio servers in this process (loopback
only, no namespace, no subprocess).  The agent process in a namespace is
tests/integration/test_web_load.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from wanmig.errors import ConfigError, ProbeError
from wanmig.workload import (
    DEFAULT_PATHS,
    RequestOutcome,
    WebLoad,
    WebLoadReport,
    WebLoadSpec,
    WebTally,
    web_agent_argv,
)
from wanmig.workload.agent import Agent, Request, error_kind, parse_args, request_bytes

MS = 1_000_000


# ----------------------------------------------------------------------------- spec


def test_spec_defaults() -> None:
    spec = WebLoadSpec("10.77.0.10")
    assert (spec.port, spec.rate_per_s, spec.request_timeout_s) == (80, 20.0, 2.0)
    assert spec.paths == DEFAULT_PATHS == ("/", "/", "/", "/blob.bin")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"target": "vm1"}, "target"),
    ({"target": "10.0.0.300"}, "target"),
    ({"port": 0}, "port"),
    ({"port": 65536}, "port"),
    ({"port": True}, "port"),
    ({"rate_per_s": 0}, "rate_per_s"),
    ({"rate_per_s": -1.0}, "rate_per_s"),
    ({"rate_per_s": 1000.5}, "rate_per_s"),
    ({"rate_per_s": float("nan")}, "rate_per_s"),
    ({"request_timeout_s": 0}, "request_timeout_s"),
    ({"request_timeout_s": float("inf")}, "request_timeout_s"),
    ({"max_in_flight": 0}, "max_in_flight"),
    ({"max_in_flight": 2.5}, "max_in_flight"),
    ({"paths": ()}, "paths"),
    ({"paths": "/"}, "paths"),
    ({"paths": ("index.html",)}, "paths"),
    ({"paths": ("/a b",)}, "paths"),
    ({"paths": ("/a\r\nX-Evil: 1",)}, "paths"),
])
def test_spec_rejects_bad_values(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"target": "10.77.0.10", **kwargs}
    with pytest.raises(ConfigError) as info:
        WebLoadSpec(**args)
    assert info.value.field == field


def test_spec_accepts_ipv6_and_a_list_of_paths() -> None:
    spec = WebLoadSpec("fd00::10", paths=["/a", "/b"])  # type: ignore[arg-type]
    assert spec.paths == ("/a", "/b")


def test_spec_round_trips_through_the_agent_command_line() -> None:
    spec = WebLoadSpec("10.1.2.3", port=8080, rate_per_s=12.5, paths=("/x", "/blob.bin"),
                       request_timeout_s=0.75, max_in_flight=7)
    parsed, args = parse_args([*spec.to_args(), "--ready-timeout", "4", "--owner", "/run/x"])
    assert parsed == spec
    assert args.ready_timeout == 4.0
    assert parse_args(["--target", "10.1.2.3"])[0] == WebLoadSpec("10.1.2.3")


def test_agent_refuses_bad_options_like_the_controller(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--target", "10.1.2.3", "--rate", "0"])
    assert info.value.code == 2
    assert "rate_per_s" in capsys.readouterr().err


def test_agent_argv_in_a_namespace_names_its_owner() -> None:
    spec = WebLoadSpec("10.77.0.10", rate_per_s=20)
    argv = web_agent_argv(spec, netns="wm1234-c", python="/venv/python", ready_timeout=29,
                          owner="/run/wanmig/abc123")
    assert argv[:5] == ["ip", "netns", "exec", "wm1234-c", "/venv/python"]
    # what `wanmig clean` looks for, right after the module
    assert argv[5:9] == ["-m", "wanmig.workload.agent", "--owner", "/run/wanmig/abc123"]
    assert argv[argv.index("--target") + 1] == "10.77.0.10"
    assert argv[argv.index("--rate") + 1] == "20.0"
    assert argv.count("--path") == 4
    assert argv[argv.index("--ready-timeout") + 1] == "29"
    local = web_agent_argv(spec, netns=None, python="py", ready_timeout=1)
    assert local[0] == "py" and "--owner" not in local


def test_web_load_validates_before_anything_runs() -> None:
    with pytest.raises(ConfigError):
        WebLoad("10.77.0.10", rate=-5)
    load = WebLoad("10.77.0.10", netns="c", rate=5, paths=["/"])
    assert load.spec.paths == ("/",)
    assert "state=idle" in repr(load) and "rate=5/s" in repr(load) and load.pid is None


async def test_web_load_refuses_commands_when_not_running() -> None:
    load = WebLoad("10.77.0.10")
    with pytest.raises(ProbeError, match="idle"):
        await load.stop()
    with pytest.raises(ProbeError, match="idle"):
        await load.mark("x")


# ----------------------------------------------------------------------------- tally


def _ok(start_ms: float, end_ms: float, nbytes: int = 100) -> RequestOutcome:
    return RequestOutcome("/", True, int(start_ms * MS), int(end_ms * MS), nbytes)


def _fail(start_ms: float, end_ms: float, error: str, *, timed_out: bool = False,
          nbytes: int = 0) -> RequestOutcome:
    return RequestOutcome("/", False, int(start_ms * MS), int(end_ms * MS), nbytes, error,
                          timed_out)


def _tally(outcomes: list[RequestOutcome], *, start_ms: float = 0.0) -> WebTally:
    tally = WebTally(int(start_ms * MS))
    for outcome in sorted(outcomes, key=lambda o: o.end_ns):  # completion order
        tally.issued()
        tally.finished(outcome)
    return tally


def test_tally_counts_and_latency_percentiles() -> None:
    outcomes = [_ok(i * 50, i * 50 + 1 + i, nbytes=10) for i in range(100)]  # 1..100 ms
    outcomes += [_fail(5000, 7000, "timeout", timed_out=True),
                 _fail(5050, 5051, "Connection refused"),
                 _fail(5100, 5102, "HTTP 404", nbytes=120),
                 _fail(5150, 5151, "Connection refused")]
    report = _tally(outcomes).report(8000 * MS, target="10.0.0.1", rate_per_s=20)
    assert (report.sent, report.ok, report.failed, report.timeouts) == (104, 100, 4, 1)
    assert report.abandoned == report.skipped == 0
    assert report.bytes_received == 100 * 10 + 120
    assert report.errors == {"timeout": 1, "Connection refused": 2, "HTTP 404": 1}
    # numpy's default percentile over 1, 2, ..., 100
    assert report.latency_p50_ms == 50.5
    assert report.latency_p99_ms == 99.01
    assert report.latency_max_ms == 100.0
    assert report.duration_ms == 8000.0
    assert report.ok_per_s == 12.5


def test_gap_spans_failures_and_is_closed_at_stop() -> None:
    # successes every 50 ms, then only failures from 1000 ms, stop at 1800 ms
    outcomes = [_ok(t - 10, t) for t in range(50, 1001, 50)]
    outcomes += [_fail(t - 10, t, "Connection refused") for t in range(1050, 1800, 50)]
    report = _tally(outcomes).report(1800 * MS, target="t", rate_per_s=20)
    assert report.max_gap_ms == 800.0 and report.max_gap_start_ms == 1000.0


def test_gap_between_successes() -> None:
    outcomes = [_ok(0, t) for t in (50, 100, 150, 1400, 1450, 1500)]
    report = _tally(outcomes).report(1520 * MS, target="t", rate_per_s=20)
    assert report.max_gap_ms == 1250.0 and report.max_gap_start_ms == 150.0


def test_gap_counts_from_the_start_of_the_load() -> None:
    # the first success only 900 ms after the load started: a 900 ms gap
    report = _tally([_ok(850, 900), _ok(900, 950)], start_ms=0).report(
        1000 * MS, target="t", rate_per_s=20)
    assert report.max_gap_ms == 900.0 and report.max_gap_start_ms == 0.0


def test_nothing_ever_answered() -> None:
    report = _tally([_fail(0, 2000, "timeout", timed_out=True)], start_ms=0).report(
        3000 * MS, target="t", rate_per_s=20)
    assert report.ok == 0 and report.failed == report.timeouts == 1
    assert report.latency_p50_ms is None and report.latency_max_ms is None
    assert report.max_gap_ms == 3000.0


def test_abandoned_skipped_marks_and_peak() -> None:
    tally = WebTally(1000 * MS)
    for _ in range(3):
        tally.issued()
    tally.finished(_ok(1000, 1010))
    tally.skip(4)
    assert tally.mark("switchover", 1250 * MS) == 250.0
    tally.abandoned_one(bytes_received=7)
    tally.abandoned_one()
    report = tally.report(1500 * MS, target="t", rate_per_s=20)
    assert report.sent == report.ok + report.failed + report.abandoned == 3
    assert (report.abandoned, report.skipped, report.peak_in_flight) == (2, 4, 3)
    assert report.bytes_received == 107
    assert report.marks == {"switchover": 250.0}
    assert tally.in_flight == 0


def test_report_round_trip_ignores_unknown_keys() -> None:
    report = _tally([_ok(0, 5), _fail(1, 2, "HTTP 500")]).report(
        100 * MS, target="10.0.0.1", rate_per_s=20)
    data = report.to_dict()
    assert WebLoadReport.from_dict(data) == report
    assert WebLoadReport.from_dict({"event": "report", **data, "newer_field": 1}) == report
    missing = dict(data)
    del missing["ok"]
    with pytest.raises(ValueError, match="ok"):
        WebLoadReport.from_dict(missing)


def test_error_kinds_are_short() -> None:
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert error_kind(EOFError("incomplete response")) == "incomplete response"
    assert error_kind(ValueError()) == "ValueError"
    request = request_bytes("10.0.0.1", "/blob.bin")
    assert request.startswith(b"GET /blob.bin HTTP/1.0\r\nHost: 10.0.0.1\r\n")
    assert request.endswith(b"\r\n\r\n")
    assert b"Host: [fd00::10]\r\n" in request_bytes("fd00::10", "/")


# ----------------------------------------------------------------------------- HTTP client

# A handler gets the request head and answers on the writer (closed after it returns).
Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """An asyncio server on 127.0.0.1; yields its port."""

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(await reader.readuntil(b"\r\n\r\n"), writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def respond(status: str, body: bytes, *, length: int | None = -1) -> Handler:
    """Answer with ``body``; ``length`` None: no Content-Length, -1: the true one."""
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> None:
        lines = f"HTTP/1.0 {status}\r\n"
        if length is not None:
            lines += f"Content-Length: {len(body) if length == -1 else length}\r\n"
        writer.write(lines.encode() + b"\r\n" + body)
        await writer.drain()
    return handler


async def close_at_once(head: bytes, writer: asyncio.StreamWriter) -> None:
    return None


async def never_answer(head: bytes, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(10)


async def _get(handler: Handler, timeout: float = 2.0) -> RequestOutcome:
    async with serving(handler) as port:
        return await Request("/blob.bin").run("127.0.0.1", port, timeout)


async def test_request_reads_the_whole_body() -> None:
    body = bytes(range(256)) * 1024
    outcome = await _get(respond("200 OK", body))
    assert outcome.ok and outcome.error is None and outcome.path == "/blob.bin"
    assert outcome.bytes_received > len(body)  # head and body
    assert 0 < outcome.latency_ms < 2000


async def test_request_without_content_length_reads_to_eof() -> None:
    outcome = await _get(respond("200 OK", b"x" * 5000, length=None))
    assert outcome.ok and outcome.bytes_received > 5000


@pytest.mark.parametrize(("handler", "error"), [
    (respond("404 Not Found", b"nope"), "HTTP 404"),
    (respond("200 OK", b"short", length=100), "incomplete response"),
    (close_at_once, "empty response"),
])
async def test_request_failures_are_named(handler: Handler, error: str) -> None:
    outcome = await _get(handler)
    assert not outcome.ok and outcome.error == error and not outcome.timed_out


async def test_request_times_out() -> None:
    began = time.monotonic()
    outcome = await _get(never_answer, timeout=0.2)
    assert time.monotonic() - began < 1.0
    assert outcome.timed_out and outcome.error == "timeout" and not outcome.ok


async def test_request_refused() -> None:
    async with serving(close_at_once) as port:
        pass  # closed again: nothing listens on that port now
    outcome = await Request("/").run("127.0.0.1", port, 2.0)
    assert not outcome.ok and not outcome.timed_out
    assert outcome.error is not None and "refused" in outcome.error.lower()


# ----------------------------------------------------------------------------- schedule


async def _run_load(spec: WebLoadSpec, seconds: float) -> WebLoadReport:
    agent = Agent(spec, out=None, ready_timeout_s=1.0)  # type: ignore[arg-type]
    tally = WebTally(time.monotonic_ns())
    asyncio.get_running_loop().call_later(seconds, agent.stopping.set)
    await agent.load(tally)
    end = time.monotonic_ns()
    await agent.abandon_in_flight(tally)
    return tally.report(end, target=spec.target, rate_per_s=spec.rate_per_s)


async def test_schedule_keeps_its_rate_and_mix() -> None:
    paths: list[str] = []

    async def handler(head: bytes, writer: asyncio.StreamWriter) -> None:
        paths.append(head.split()[1].decode())
        await respond("200 OK", b"ok")(head, writer)

    async with serving(handler) as port:
        spec = WebLoadSpec("127.0.0.1", port=port, rate_per_s=40,
                           paths=("/a", "/a", "/a", "/b"))
        report = await _run_load(spec, 1.0)
    assert 35 <= report.sent <= 42  # slot 0 at once, then every 25 ms
    assert report.ok == report.sent - report.abandoned and report.failed == 0
    assert report.skipped == 0 and report.max_gap_ms < 300
    assert paths[:8] == ["/a", "/a", "/a", "/b"] * 2  # several in flight, but issued in order


async def test_schedule_skips_slots_beyond_max_in_flight() -> None:
    async with serving(never_answer) as port:
        spec = WebLoadSpec("127.0.0.1", port=port, rate_per_s=50, max_in_flight=5,
                           request_timeout_s=5.0)
        report = await _run_load(spec, 0.5)
    assert report.sent == 5 and report.abandoned == 5 and report.ok == report.failed == 0
    assert report.skipped >= 15 and report.peak_in_flight == 5
    assert report.max_gap_ms >= 450  # nothing succeeded: the whole run is one gap
