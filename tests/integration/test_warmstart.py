"""wancopy's warm start: connections to its port from A start with the larger window,
every other connection with Linux's own, and nothing stays after ``remove``."""

from __future__ import annotations

import asyncio
import re
import sys

import pytest

from wanmig.registry import Registry, new_run_id
from wanmig.storage.wancopy.warmstart import DEFAULT_INITCWND, WarmStart
from wanmig.testbed import Testbed

pytestmark = pytest.mark.root

PORT, OTHER = 10810, 10811
SEGMENTS = 432

# B: listen on both ports and hold what connects; A: connect to one, print ss's view of it
_LISTEN = """
import socket, sys, time
held = []
for port in (int(sys.argv[2]), int(sys.argv[3])):
    s = socket.socket(); s.bind((sys.argv[1], port)); s.listen(); held.append(s)
print("ready", flush=True)
time.sleep(30)
"""
_CONNECT = """
import socket, subprocess, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(subprocess.run(["ss", "-tin", "dport", "=", sys.argv[2]], capture_output=True,
                     text=True, check=True).stdout)
"""


async def _cwnd(tb: Testbed, port: int) -> int:
    out = await tb.site_a.run(sys.executable, "-c", _CONNECT, tb.addr.site_b_ip, str(port))
    found = re.search(r"\bcwnd:(\d+)", out)
    assert found, out
    return int(found.group(1))


async def test_only_wancopys_connections_start_with_the_larger_window() -> None:
    registry = Registry(new_run_id())
    async with Testbed(registry) as tb:
        listener = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", tb.site_b.name, sys.executable, "-c", _LISTEN,
            tb.addr.site_b_ip, str(PORT), str(OTHER), stdout=asyncio.subprocess.PIPE)
        try:
            assert listener.stdout is not None
            assert (await asyncio.wait_for(listener.stdout.readline(), 15)).strip() == b"ready"
            assert await _cwnd(tb, PORT) == DEFAULT_INITCWND
            warm = WarmStart(tb.site_a, tb.addr.site_b_ip, PORT, SEGMENTS)
            await warm.add()
            assert await _cwnd(tb, PORT) == SEGMENTS
            assert await _cwnd(tb, OTHER) == DEFAULT_INITCWND
            await warm.remove()
            assert await _cwnd(tb, PORT) == DEFAULT_INITCWND
            rules = await tb.site_a.run("ip", "rule")
            assert f"dport {PORT}" not in rules, rules
        finally:
            listener.kill()
            await listener.wait()
    registry.close()
