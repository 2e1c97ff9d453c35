"""Child processes are owned and reaped: the two helpers every owner uses."""

from __future__ import annotations

import asyncio
import os
import signal


def sigkill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc`` unless it has already exited."""
    if proc.returncode is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def reap(proc: asyncio.subprocess.Process, timeout: float) -> int:
    """Wait up to ``timeout`` for ``proc`` to exit, then kill it; returns its exit code."""
    try:
        return await asyncio.wait_for(proc.wait(), timeout=timeout)
    except asyncio.TimeoutError:
        sigkill(proc)
        return await asyncio.wait_for(proc.wait(), timeout=5.0)
