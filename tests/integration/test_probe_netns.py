"""The probe agent against real echo/HTTP servers in a private network namespace.

Each test gets its own namespace ``wmt-probe-<random4>`` with only ``lo`` up,
and three small servers inside it (UDP echo :7, TCP echo :7, HTTP :80), each
its own process so that one can be paused or killed alone.  Everything is
removed at teardown, also when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from wanmig.errors import ProbeError
from wanmig.probe import ClientProbe, ProbeReport
from wanmig.probe.probes import HTTP_INTERVAL_NS, TCP_INTERVAL_NS

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

SERVER_CODE = r"""
import socket, sys, threading
kind, port = sys.argv[1], int(sys.argv[2])
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    print("up", flush=True)
    while True:
        data, addr = s.recvfrom(65536)
        s.sendto(data, addr)
elif kind == "tcp":
    srv = socket.create_server(("127.0.0.1", port))
    print("up", flush=True)
    def echo(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
else:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # the probe abandons a request in flight when it stops
    httpd = Server(("127.0.0.1", port), Handler)
    print("up", flush=True)
    httpd.serve_forever()
"""

SERVERS = {"udp": 7, "tcp": 7, "http": 80}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"wmt-probe-{secrets.token_hex(2)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


@pytest.fixture
def servers(netns: str) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for kind, port in SERVERS.items():
            procs[kind] = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-c", SERVER_CODE,
                 kind, str(port)], stdout=subprocess.PIPE, start_new_session=True)
        for kind, proc in procs.items():
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 10.0)
            assert ready and proc.stdout.readline() == b"up\n", f"{kind} server did not start"
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()


def _signal_all(procs: dict[str, subprocess.Popen[bytes]], sig: int) -> None:
    for proc in procs.values():
        os.kill(proc.pid, sig)


async def test_steady_state(netns: str, servers: dict[str, subprocess.Popen[bytes]]) -> None:
    async with ClientProbe("127.0.0.1", netns=netns) as probe:
        assert "running" in repr(probe)
        assert probe.ready_info["udp_realtime"] is True
        await asyncio.sleep(1.0)
        t_mark = await probe.mark("middle")
        ms = await probe.new_connection_ms()
        await asyncio.sleep(1.0)
        report = await probe.stop()
    assert "stopped" in repr(probe)
    assert ms is not None and ms < 500
    assert report.marks == {"middle": t_mark}
    assert 1500 <= report.udp_sent <= 2600
    assert report.udp_received >= report.udp_sent - 5
    assert report.udp_lost == report.udp_sent - report.udp_received
    assert report.udp_max_gap_ms < 100
    assert report.udp_rtt_p50_ms is not None and report.udp_rtt_p50_ms < 5
    assert report.tcp_survived, report.tcp_error
    # ~2 s of a message every 50 ms and a GET every 200 ms: no gap past 3 and 2 of them
    assert report.tcp_error is None and report.tcp_echoes >= 30
    assert report.tcp_max_gap_ms < 3 * TCP_INTERVAL_NS / 1e6
    assert report.http_ok >= 8 and report.http_failed == 0
    assert report.http_max_gap_ms < 2 * HTTP_INTERVAL_NS / 1e6
    assert report.duration_ms > t_mark > 0
    assert ProbeReport.from_dict(report.to_dict()) == report
    print(f"\nsteady: {report}")


async def test_pause_shows_as_gap(netns: str,
                                  servers: dict[str, subprocess.Popen[bytes]]) -> None:
    async with ClientProbe("127.0.0.1", netns=netns) as probe:
        await asyncio.sleep(0.5)
        await probe.mark("pause")
        _signal_all(servers, signal.SIGSTOP)
        paused = time.monotonic()
        await asyncio.sleep(0.3)
        _signal_all(servers, signal.SIGCONT)
        paused = time.monotonic() - paused
        await probe.mark("resume")
        await asyncio.sleep(0.7)
        report = await probe.stop()
    print(f"\npause {paused * 1000:.1f} ms -> udp gap {report.udp_max_gap_ms} ms, "
          f"tcp gap {report.tcp_max_gap_ms} ms, http gap {report.http_max_gap_ms} ms, "
          f"vs marks {report.udp_max_gap_vs_marks()}, "
          f"late p99 {report.udp_send_late_p99_ms} ms, cpu {report.agent_cpu_pct}%")
    assert 250 <= report.udp_max_gap_ms <= paused * 1000 + 100
    # the last reply before the pause may precede the mark by up to one interval
    assert -5.0 <= report.udp_max_gap_vs_marks()["pause"] <= 5.0
    assert report.udp_max_gap_end_ms is not None
    assert report.udp_max_gap_end_ms - report.udp_max_gap_start_ms == pytest.approx(
        report.udp_max_gap_ms, abs=0.01)
    assert report.tcp_survived, report.tcp_error
    assert report.tcp_max_gap_ms >= 250
    assert report.http_max_gap_ms >= 250


async def test_killed_tcp_server_breaks_the_stream(
        netns: str, servers: dict[str, subprocess.Popen[bytes]]) -> None:
    async with ClientProbe("127.0.0.1", netns=netns) as probe:
        await asyncio.sleep(0.3)
        os.kill(servers["tcp"].pid, signal.SIGKILL)
        await asyncio.sleep(0.3)
        report = await probe.stop()
    assert not report.tcp_survived
    assert report.tcp_error and ("closed" in report.tcp_error or "reset" in report.tcp_error)
    assert report.udp_max_gap_ms < 100  # the other probes did not notice


async def test_stop_does_not_hang_on_a_silent_target(
        netns: str, servers: dict[str, subprocess.Popen[bytes]]) -> None:
    probe = ClientProbe("127.0.0.1", netns=netns)
    await probe.start()
    try:
        await asyncio.sleep(0.3)
        _signal_all(servers, signal.SIGSTOP)
        await asyncio.sleep(0.5)
        began = time.monotonic()
        report = await probe.stop(timeout=10.0)
        took = time.monotonic() - began
    finally:
        await probe.kill()
    assert took < 6.0
    assert not report.tcp_survived and "not echoed" in (report.tcp_error or "")
    assert report.udp_max_gap_ms >= 450  # the open gap is closed at stop


async def test_not_ready_raises_with_reason(netns: str) -> None:
    probe = ClientProbe("127.0.0.1", netns=netns)
    began = time.monotonic()
    with pytest.raises(ProbeError, match="not ready") as info:
        await probe.start(timeout=3.0)
    assert time.monotonic() - began < 5.0
    assert "udp" in str(info.value) and "tcp" in str(info.value)
    assert "stopped" in repr(probe) and probe.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(probe.pid, 0)  # reaped


async def test_new_connection_to_a_silent_server_fails_in_time(
        netns: str, servers: dict[str, subprocess.Popen[bytes]]) -> None:
    async with ClientProbe("127.0.0.1", netns=netns) as probe:
        os.kill(servers["http"].pid, signal.SIGSTOP)
        began = time.monotonic()
        assert await probe.new_connection_ms(timeout=1.5) is None
        assert time.monotonic() - began < 1.5
        os.kill(servers["http"].pid, signal.SIGCONT)
        assert await probe.new_connection_ms() is not None
        await probe.stop()


async def test_dead_agent_raises_and_is_reaped(
        netns: str, servers: dict[str, subprocess.Popen[bytes]]) -> None:
    probe = ClientProbe("127.0.0.1", netns=netns)
    await probe.start()
    assert probe.pid is not None
    os.kill(probe.pid, signal.SIGKILL)
    with pytest.raises(ProbeError, match="exited"):
        await probe.mark("after-death")
    with pytest.raises(ProbeError):
        await probe.stop()
    assert "stopped" in repr(probe)
