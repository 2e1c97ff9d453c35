"""Child processes are owned and reaped.

``sigkill`` and ``reap`` are what every owner of a child uses.
``JsonLinesChild`` is the plumbing shared by the children wanmig drives with
commands (the probe agent, the WAN forwarder, the measurement endpoints)::

    stdin    one command per line ("stop", "mark NAME", "set {...}"); EOF: finish
    stdout   one JSON object per line, {"event": NAME, ...};
             {"event": "error", "message": ...} reports a failure
    stderr   free text; the last lines go into error messages

Its life, shown by ``__repr__``::

    NEW ──spawn()──> RUNNING ──close() / kill()──> CLOSED

The child runs in its own session, so a Ctrl-C aimed at the controller does
not kill it before its answer is read; it is registered with the run's
``Registry`` while it lives, so ``wanmig clean`` finds it after a crash.
Every wait has a timeout, one command is answered before the next is sent,
and every failure raises the owner's error type (``ProbeError``,
``NetworkError``, ``MeasurementError``) with the child's own message, or with
its exit code and the tail of its stderr.  ``CancelledError`` is never
swallowed: a close that is cancelled kills the child before it propagates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

from .errors import WanmigError
from .registry import Registry

STDERR_TAIL_LINES = 20
EXIT_GRACE_S = 2.0  # a child that closed its output gets this long to exit, for its code


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


def strip_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event's fields without its name."""
    return {k: v for k, v in event.items() if k != "event"}


class ChildState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class JsonLinesChild:
    """One child process driven by command lines on stdin, answering JSON events.

    ``name`` starts every error message ("probe agent exited (code 1) before
    ready: ..."); ``error`` is the type raised; ``log`` gets the command line
    and the child's stderr (debug).
    """

    def __init__(self, argv: Sequence[str], *, name: str, error: type[WanmigError],
                 registry: Registry | None = None, log: logging.Logger | None = None) -> None:
        self.argv = list(argv)
        self.name = name
        self.error = error
        self.registry = registry
        self.log = log or logging.getLogger("wanmig.children")
        self.state = ChildState.NEW
        self._proc: asyncio.subprocess.Process | None = None
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._eof = False
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._readers: list[asyncio.Task[None]] = []  # [stdout events, stderr lines]
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (f"JsonLinesChild({self.name!r}, state={self.state.value}, pid={self.pid}, "
                f"returncode={self.returncode})")

    @property
    def pid(self) -> int | None:
        """The child's pid once spawned (still there after it was reaped)."""
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has exited (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.returncode

    # -- lifetime -------------------------------------------------------------

    async def spawn(self) -> None:
        """Start the child and its readers; the error type if it cannot be run."""
        if self.state is not ChildState.NEW:
            raise self.error(f"{self.name}: cannot spawn in state {self.state.value}")
        self.log.debug("exec %s", " ".join(self.argv))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=1 << 20)
        except OSError as exc:
            self.state = ChildState.CLOSED
            raise self.error(f"cannot run {self.name}: {exc}", cause=exc) from exc
        self.state = ChildState.RUNNING
        if self.registry:
            self.registry.add_pid(self._proc.pid)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [asyncio.create_task(self._read_events(self._proc.stdout)),
                         asyncio.create_task(self._read_stderr(self._proc.stderr))]

    def end_input(self, last_line: str | None = None) -> None:
        """Write ``last_line`` (if any) and close stdin: EOF asks the child to finish.

        A child that has already gone is not an error here: what it said, or
        why it said nothing, is what ``next_event()`` reports.
        """
        stdin = self._proc.stdin if self._proc else None
        if stdin is None or stdin.is_closing():
            return
        if last_line is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                stdin.write(last_line.encode() + b"\n")
        stdin.close()

    async def close(self, timeout: float) -> int | None:
        """EOF on stdin, wait up to ``timeout`` (then SIGKILL), reap; idempotent.

        Returns the exit code (None if the child never ran).
        """
        proc = self._proc
        if proc is not None and self.state is ChildState.RUNNING:
            self.end_input()
            try:
                await reap(proc, timeout)
            except BaseException:
                sigkill(proc)  # cancelled or stuck: it must not outlive its owner
                raise
            if self.registry:
                self.registry.drop_pid(proc.pid)
        self.state = ChildState.CLOSED
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers = []
        return self.returncode

    async def kill(self) -> None:
        """SIGKILL the child if it runs, and reap it.  Idempotent."""
        if self._proc is not None:
            sigkill(self._proc)
        await self.close(5.0)

    # -- commands and events --------------------------------------------------

    async def command(self, line: str, expected: str, timeout: float) -> dict[str, Any]:
        """Send ``line`` and return the answer named ``expected``; one command at a time."""
        verb = line.split()[0]
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._lock.acquire()
        except TimeoutError as exc:
            raise self.error(f"{self.name} busy: {verb} not sent within {timeout:g} s",
                             cause=exc) from exc
        try:
            await self.send(line, deadline - time.monotonic())
            return await self._event_by(deadline, expected, verb, timeout)
        finally:
            self._lock.release()

    async def send(self, line: str, timeout: float = 5.0) -> None:
        """Write one command line; the error type if the child is gone or does not read."""
        verb = line.split()[0]
        stdin = self._proc.stdin if self._proc else None
        if self.state is not ChildState.RUNNING or stdin is None or stdin.is_closing():
            raise self.error(f"{self.name} takes no more commands ({self.state.value}), "
                             f"cannot {verb}")
        try:
            stdin.write(line.encode() + b"\n")
            await asyncio.wait_for(stdin.drain(), timeout=max(0.1, timeout))
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise self.error(await self._exit_message(verb), cause=exc) from exc
        except TimeoutError as exc:
            raise self.error(f"{self.name} does not read its commands", cause=exc) from exc

    async def next_event(self, expected: str, timeout: float,
                         what: str | None = None) -> dict[str, Any]:
        """The next event named ``expected``; other events are logged and skipped.

        Raises the error type on an error event, on the child's exit and after
        ``timeout``; ``what`` names the awaited answer in those messages.
        """
        return await self._event_by(time.monotonic() + timeout, expected, what or expected,
                                    timeout)

    def stderr_tail(self, lines: int = 3) -> str:
        """The child's last stderr lines, joined on one line."""
        return " | ".join(list(self._stderr)[-lines:]) or "no stderr"

    # -- plumbing -------------------------------------------------------------

    async def _event_by(self, deadline: float, expected: str, what: str,
                        timeout: float) -> dict[str, Any]:
        # ``timeout`` only for the message: a command's deadline covers its send too
        while True:
            if self._eof and self._events.empty():
                raise self.error(await self._exit_message(what))
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                event = await asyncio.wait_for(self._events.get(), timeout=left)
            except TimeoutError as exc:
                raise self.error(f"{self.name} gave no {what} answer within {timeout:g} s"
                                 f" ({self.stderr_tail()})", cause=exc) from exc
            if event is None:
                continue  # EOF: reported by the check at the top
            name = event.get("event")
            if name == "error":
                raise self.error(f"{self.name}: {event.get('message', 'unknown error')}")
            if name == expected:
                return event
            self.log.debug("ignored %s event while waiting for %s: %s", self.name, expected,
                           event)

    async def _exit_message(self, what: str) -> str:
        # give the child a moment to exit and its stderr to be read: that is the why
        if self._proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), timeout=EXIT_GRACE_S)
        if self._readers[1:]:
            await asyncio.wait(self._readers[1:], timeout=1.0)
        code = self.returncode
        status = f"code {code}" if code is not None else "closed its output"
        return f"{self.name} exited ({status}) before {what}: {self.stderr_tail()}"

    async def _read_events(self, stdout: asyncio.StreamReader) -> None:
        try:
            async for raw in stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    self.log.warning("%s printed a non-JSON line: %r", self.name, raw[:200])
                    continue
                if isinstance(event, dict):
                    self._events.put_nowait(event)
        finally:
            self._eof = True
            self._events.put_nowait(None)

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        async for raw in stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                self.log.debug("%s: %s", self.name, line)
