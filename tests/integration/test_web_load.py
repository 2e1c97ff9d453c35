"""The web-load agent in a client namespace against busybox httpd in a server namespace.

Each test makes its own pair of namespaces, ``wmt-web-<random4>-c`` (client)
and ``-s`` (server), joined by a veth pair (10.203.0.1/24 and .2/24), and runs
``busybox httpd`` in the server namespace, the same server the guest runs,
serving what the guest serves: an index page and a 256 KiB ``/blob.bin``.
Everything is removed at the end of each test, also when it fails, and the
tests check that nothing they made is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wanmig.errors import ProbeError
from wanmig.registry import Registry, kill_owned, new_run_id
from wanmig.workload import WebLoad, WebLoadReport

from ..conftest import netns_names

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

CLIENT_IP, SERVER_IP = "10.203.0.1", "10.203.0.2"
BLOB_SIZE = 262144


@dataclass
class Pair:
    client: str
    server: str
    httpd: subprocess.Popen[bytes]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not a leftover: our Popen reaps it
    status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
    return "State:\tZ" not in status


@contextlib.contextmanager
def namespace_pair(www: Path) -> Iterator[Pair]:
    """Client and server namespaces, a veth between them, httpd serving ``www``."""
    tag = secrets.token_hex(2)
    client, server = f"wmt-web-{tag}-c", f"wmt-web-{tag}-s"
    made: list[str] = []
    httpd: subprocess.Popen[bytes] | None = None
    try:
        for name in (client, server):
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", client, "link", "add", "web0", "type", "veth", "peer", "name", "web1",
            "netns", server)
        _ip("-n", client, "addr", "add", f"{CLIENT_IP}/24", "dev", "web0")
        _ip("-n", server, "addr", "add", f"{SERVER_IP}/24", "dev", "web1")
        _ip("-n", client, "link", "set", "web0", "up")
        _ip("-n", server, "link", "set", "web1", "up")
        # -f: stays in the foreground, so this Popen is the server and can be paused
        httpd = subprocess.Popen(["ip", "netns", "exec", server, "busybox", "httpd", "-f",
                                  "-p", f"{SERVER_IP}:80", "-h", str(www)],
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        yield Pair(client, server, httpd)
    finally:
        if httpd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(httpd.pid, signal.SIGCONT)
                os.kill(httpd.pid, signal.SIGKILL)
            httpd.wait(timeout=10)
        for name in made:  # the veth goes with its namespaces
            subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<html><body>wanmig test server</body></html>\n")
    (root / "blob.bin").write_bytes(os.urandom(BLOB_SIZE))
    return root


@pytest.fixture
def registry() -> Iterator[Registry]:
    reg = Registry(new_run_id())
    try:
        yield reg
    finally:
        reg.close()


async def test_steady_load_and_nothing_left(www: Path, registry: Registry) -> None:
    with namespace_pair(www) as pair:
        load = WebLoad(SERVER_IP, netns=pair.client, rate=20, registry=registry)
        await load.start()
        agent_pid = load.pid
        assert agent_pid is not None and registry.pids == [agent_pid]
        assert "running" in repr(load)
        await asyncio.sleep(1.5)
        t_mark = await load.mark("middle")
        await asyncio.sleep(1.5)
        report = await load.stop()
        assert "stopped" in repr(load)
        assert registry.pids == [] and not _alive(agent_pid)
        httpd_pid = pair.httpd.pid
    print(f"\nweb load: {report.to_dict()}")

    assert report.ok >= 40, report
    assert report.failed == 0 and report.timeouts == 0 and report.errors == {}, report
    assert report.sent == report.ok + report.abandoned and report.skipped == 0
    blobs = report.ok // 4  # every fourth request is /blob.bin
    assert report.bytes_received >= blobs * BLOB_SIZE
    assert report.latency_p50_ms is not None and report.latency_p50_ms < 500
    assert report.latency_p99_ms is not None and report.latency_max_ms is not None
    assert report.latency_p50_ms <= report.latency_p99_ms <= report.latency_max_ms
    assert report.max_gap_ms < 1000
    assert 2500 <= report.duration_ms <= 6000 and 0 < report.marks["middle"] == t_mark
    assert WebLoadReport.from_dict(report.to_dict()) == report

    # what the test made is gone: namespaces (with the veth), server, agent
    assert not {n for n in netns_names() if n.startswith(pair.client[:-2])}
    assert not _alive(httpd_pid) and not _alive(agent_pid)


async def test_paused_server_shows_as_timeouts_and_a_gap(www: Path, registry: Registry) -> None:
    with namespace_pair(www) as pair:
        async with WebLoad(SERVER_IP, netns=pair.client, rate=20, registry=registry) as load:
            await asyncio.sleep(0.5)
            os.kill(pair.httpd.pid, signal.SIGSTOP)
            paused = time.monotonic()
            await asyncio.sleep(2.5)  # longer than the 2 s request timeout
            os.kill(pair.httpd.pid, signal.SIGCONT)
            paused = time.monotonic() - paused
            await asyncio.sleep(1.0)
            report = await load.stop()
    print(f"\npaused {paused * 1000:.0f} ms: {report.to_dict()}")
    assert report.timeouts >= 1 and report.errors.get("timeout") == report.timeouts
    assert report.failed >= report.timeouts
    assert report.ok >= 20  # before the pause and after it
    assert 2000 <= report.max_gap_ms <= paused * 1000 + 1000


async def test_not_ready_is_a_probe_error_with_the_reason(www: Path, registry: Registry) -> None:
    with namespace_pair(www) as pair:
        load = WebLoad(SERVER_IP, netns=pair.client, port=81, registry=registry)
        with pytest.raises(ProbeError, match=r"not answering.*Connection refused"):
            await load.start(timeout=3.0)
        assert "stopped" in repr(load) and registry.pids == []


async def test_a_crashed_runs_agent_is_found_by_its_owner_marker(www: Path,
                                                                 registry: Registry) -> None:
    with namespace_pair(www) as pair:
        load = WebLoad(SERVER_IP, netns=pair.client, registry=registry)
        await load.start()
        try:
            pid = load.pid
            assert pid is not None and registry.pids == [pid]
            # what `wanmig clean` does for each registered pid of a dead owner: another
            # run's marker leaves the agent alone, this run's kills it
            assert not kill_owned(pid, "/run/wanmig/not-this-run") and _alive(pid)
            assert kill_owned(pid, str(registry.run_dir), grace_s=5.0)
        finally:
            await load.kill()
        assert load.pid is not None and not _alive(load.pid)
