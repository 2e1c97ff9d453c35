"""Hostile input to the network endpoints wanmig serves itself: malformed, truncated and
oversized input ends that connection with a clear error and nothing else -- the server
still serves, nothing hangs, and it stops cleanly with nothing left behind.

The endpoints: wancopy's receiver (the disk transport B serves, here without TLS so
the garbage reaches the parser; a TLS peer must first pass the CA and the pinned
client certificate), and the measurement tools' UDP echo and sinks.  The tunnels are
OpenVPN's and the NBD servers QEMU's (``test_tunnel.py``, ``test_storage.py`` check
their refusals).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wanmig.children import module_argv
from wanmig.storage.wancopy import protocol as p

pytestmark = [pytest.mark.root, pytest.mark.qemu]

PORT = 17730
SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
CLOSE_WITHIN_S = 5.0


def _events(proc: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    assert proc.stdout is not None
    for line in proc.stdout:
        yield json.loads(line)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[str]]:
    d = tmp_path_factory.mktemp("hostile")
    base, target = d / "base.raw", d / "b.qcow2"
    with base.open("wb") as f:
        f.truncate(8 * 2**20)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(target)], check=True)
    argv = module_argv("wanmig.storage.wancopy", [
        "receive", "--address", "127.0.0.1", "--port", str(PORT), "--session", "s",
        "--streams", "2", "--target", str(target), "--base", str(base)],
        python=sys.executable)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = next(_events(proc))
    assert ready["event"] == "ready", ready
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _exchange(data: bytes) -> bytes:
    """Send ``data``, close our side, read until the receiver closes (which it must)."""
    with socket.create_connection(("127.0.0.1", PORT), timeout=CLOSE_WITHIN_S) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return b""     # it closed on us mid-send: a refusal too
        got = b""
        while chunk := s.recv(65536):   # socket.timeout here is a hang: the test fails
            got += chunk
        return got


hello = st.fixed_dictionaries({
    "session": st.sampled_from(["s", "other", ""]), "version": st.sampled_from([1, 2, "1"]),
    "role": st.sampled_from(["stream", "index", "nonsense"]),
    "stream": st.one_of(st.integers(-5, 70), st.text(max_size=3), st.none())})
frames = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255),
                            st.binary(max_size=300)), max_size=6)


@SETTINGS
@given(raw=st.binary(max_size=4096))
def test_garbage_bytes_end_only_their_connection(receiver: subprocess.Popen[str],
                                                 raw: bytes) -> None:
    _exchange(raw)
    assert receiver.poll() is None


@SETTINGS
@given(first=hello, rest=frames, lie=st.integers(0, 2**32 - 1))
def test_malformed_frames_after_a_hello_are_refused(receiver: subprocess.Popen[str],
                                                    first: dict[str, Any],
                                                    rest: list[tuple[int, int, bytes]],
                                                    lie: int) -> None:
    data = p.encode_json(p.HELLO, first)
    for ftype, flags, payload in rest:
        data += p.encode(ftype, payload, flags)
    # a last header that claims more than it carries (truncated) or more than allowed
    data += struct.pack(">BBI", p.DATA, 0, lie)
    reply = _exchange(data)
    assert receiver.poll() is None
    if reply and reply[0] == p.ERROR:
        assert len(reply) >= 6   # a whole ERROR frame: its reason


def test_the_receiver_still_serves_and_stops_cleanly(receiver: subprocess.Popen[str]) -> None:
    """After all that: an index request is answered, and ``stop`` ends it with its
    count of refused connections."""
    reply = _exchange(p.encode_json(p.HELLO, {"session": "s", "version": p.VERSION,
                                               "role": "index"}))
    assert reply[0] == p.INDEX
    assert receiver.stdin is not None
    receiver.stdin.write("stop\n")
    receiver.stdin.flush()
    events = [e for e in _events(receiver)]
    stopped = next(e for e in events if e["event"] == "stopped")
    assert stopped["rejected"] > 0
    assert receiver.wait(30) == 0


UDP_TOOLS = [("udp-echo", 17731), ("udp-sink", 17732)]


@pytest.fixture(scope="module", params=UDP_TOOLS, ids=[t for t, _ in UDP_TOOLS])
def udp_tool(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], int]]:
    mode, port = request.param
    proc = subprocess.Popen(module_argv("wanmig.wan.tools", [mode, "--port", str(port),
                                                             "--bind", "127.0.0.1"],
                                        python=sys.executable),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert next(_events(proc))["event"] == "ready"
    try:
        yield proc, port
        assert proc.stdin is not None    # after everything thrown at it: a clean stop
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@SETTINGS
@given(datagram=st.binary(max_size=1500))
def test_measurement_endpoints_survive_any_datagram(
        udp_tool: tuple[subprocess.Popen[str], int], datagram: bytes) -> None:
    proc, port = udp_tool
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(datagram, ("127.0.0.1", port))
    assert proc.poll() is None


def test_measurement_endpoints_listen_on_their_address_only(
        udp_tool: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = udp_tool
    out = subprocess.run(["ss", "-Hulnp", f"sport = :{port}"], capture_output=True,
                         text=True).stdout
    assert f"127.0.0.1:{port}" in out and f"0.0.0.0:{port}" not in out
    assert proc.poll() is None
