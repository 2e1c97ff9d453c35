"""Child processes are owned and reaped: one way to name, run and drive them.

Three things every owner of a child uses, written once here:

``module_argv()``
    the command line ``[ip netns exec NS] PYTHON -m MODULE [--owner RUN_DIR] ARGS``
    of every wanmig child (the probe and web-load agents, the WAN forwarder,
    the measurement endpoints).  ``--owner RUN_DIR`` is what ``wanmig clean``
    looks for on a leftover's command line; it comes before ARGS so that a
    module whose ARGS start with a sub-command (``wanmig.wan.tools``) takes it.
``run_command()``
    a short command (``tc``, ``ip``, ``sysctl``, ``bridge``): its exit code,
    stdout and stderr, or the owner's error with the command's own stderr.
    On a timeout and on cancellation the command is killed and reaped before
    the error (or the ``CancelledError``) propagates.
``JsonLinesChild``
    a long-lived child driven by commands::

        stdin    one command per line ("stop", "mark NAME", "set {...}"); EOF: finish
        stdout   one JSON object per line, {"event": NAME, ...};
                 {"event": "error", "message": ...} reports a failure
        stderr   free text; the last lines go into error messages

    Its life, shown by ``__repr__``::

        IDLE ──start()──> STARTING ──ready──> RUNNING ──finish()──> STOPPING ──> STOPPED
          │                                      ^
          └──────────────── spawn() ─────────────┘
        a failure, close() or kill() leads from any state to STOPPED

    ``start()`` waits for the child's ``ready`` event (``spawn()`` is for a
    child that announces nothing); ``finish()`` sends the last command (or
    none), waits for the final event (a report, a result, the stats) and
    reaps the child.  The handles built on it (``AgentHandle``,
    ``ToolProcess``, ``WanLink``'s forwarder) only add their own commands.

The long-lived child runs in its own session, so a Ctrl-C aimed at the
controller does not kill it before its answer is read; it is registered with
the run's ``Registry`` while it lives, so ``wanmig clean`` finds it after a
crash.  Every wait has a timeout, one command is answered before the next is
sent, and every failure raises the owner's error type (``ProbeError``,
``NetworkError``, ``MeasurementError``) with the child's own message, or with
its exit code and the tail of its stderr.  ``CancelledError`` is never
swallowed: a wait that is cancelled kills and reaps the child before it
propagates.
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
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from .errors import WanmigError
from .registry import Registry

STDERR_TAIL_LINES = 20
EXIT_GRACE_S = 2.0  # a child that closed its output gets this long to exit, for its code
KILL_REAP_S = 5.0   # a SIGKILLed child is gone long before this


def sigkill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc`` unless it has already exited."""
    if proc.returncode is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc`` and wait for its exit status.

    Shielded: called while a ``CancelledError`` propagates, a second
    cancellation does not leave the wait (and so the zombie) half done.
    """
    sigkill(proc)
    with contextlib.suppress(TimeoutError):
        await asyncio.shield(asyncio.wait_for(proc.wait(), timeout=KILL_REAP_S))


async def reap(proc: asyncio.subprocess.Process, timeout: float) -> int:
    """Wait up to ``timeout`` for ``proc`` to exit, then kill it; returns its exit code."""
    try:
        return await asyncio.wait_for(proc.wait(), timeout=timeout)
    except asyncio.TimeoutError:
        await kill_and_reap(proc)
        assert proc.returncode is not None, f"pid {proc.pid} survived SIGKILL"
        return proc.returncode


def strip_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event's fields without its name."""
    return {k: v for k, v in event.items() if k != "event"}


def emit(event: str, **fields: Any) -> None:
    """In a child: one JSON event on stdout (what ``JsonLinesChild`` reads).  A closed
    pipe is not an error: the controller went away, nothing is left to tell."""
    try:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


# ----------------------------------------------------------------- command lines

def module_argv(module: str, args: Sequence[str] = (), *, python: str = sys.executable,
                netns: str | None = None, owner: str | None = None) -> list[str]:
    """``[ip netns exec NETNS] PYTHON -m MODULE [--owner OWNER] ARGS``; pure.

    ``owner`` is the run directory (``owner_of(registry)``): ``wanmig clean``
    kills a leftover only if its command line names it.
    """
    argv = [python, "-m", module, *(["--owner", owner] if owner else []), *args]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def owner_of(registry: Registry | None) -> str | None:
    """What ``module_argv`` puts after ``--owner`` for a run: its directory."""
    return str(registry.run_dir) if registry else None


# ---------------------------------------------------------------- short commands

@dataclass(frozen=True)
class Completed:
    """A short command that ran to its end: exit code, stdout, stderr (stripped)."""

    code: int
    out: str
    err: str


async def run_command(argv: Sequence[str], *, timeout: float, error: type[WanmigError],
                      check: bool = True, what: str | None = None) -> Completed:
    """Run ``argv`` to its end within ``timeout`` s; stdin is /dev/null.

    ``check``: a non-zero exit raises ``error`` ("WHAT failed: its stderr");
    otherwise the caller judges the code.  ``what`` names the command in
    messages (default: the command line).  A command that overruns
    ``timeout``, or whose caller is cancelled, is SIGKILLed and reaped before
    ``error`` (or the ``CancelledError``) propagates.
    """
    what = what or " ".join(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise error(f"cannot run {what}: {exc}", cause=exc) from exc
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except BaseException as exc:
        await kill_and_reap(proc)  # timed out or cancelled: it must not outlive its owner
        if isinstance(exc, TimeoutError):
            raise error(f"{what} timed out after {timeout:g} s", cause=exc) from exc
        raise
    assert proc.returncode is not None
    done = Completed(proc.returncode, out.decode(errors="replace"),
                     err.decode(errors="replace").strip())
    if check and done.code != 0:
        raise error(f"{what} failed: {done.err or f'code {done.code}'}")
    return done


# ------------------------------------------------------------ long-lived children

class ChildState(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class JsonLinesChild:
    """One child process driven by command lines on stdin, answering JSON events.

    ``name`` starts every error message ("probe agent exited (code 1) before
    ready: ..."); ``error`` is the type raised; ``log`` gets the command line
    and the child's stderr (debug).  ``async with`` kills what still runs at
    its end (call ``finish()`` for the child's last word).
    """

    def __init__(self, argv: Sequence[str], *, name: str, error: type[WanmigError],
                 registry: Registry | None = None, log: logging.Logger | None = None) -> None:
        self.argv = list(argv)
        self.name = name
        self.error = error
        self.registry = registry
        self.log = log or logging.getLogger("wanmig.children")
        self.state = ChildState.IDLE
        self.ready_info: dict[str, Any] = {}  # the ready event's fields, once start() has it
        self._proc: asyncio.subprocess.Process | None = None
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._eof = False
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._readers: list[asyncio.Task[None]] = []  # [stdout events, stderr lines]
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, state={self.state.value}, "
                f"pid={self.pid}, returncode={self.returncode})")

    @property
    def pid(self) -> int | None:
        """The child's pid once spawned (still there after it was reaped)."""
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has exited (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.returncode

    # -- lifetime -------------------------------------------------------------

    async def start(self, timeout: float) -> dict[str, Any]:
        """Spawn the child and wait up to ``timeout`` for its ``ready`` event.

        Returns the event's fields (also kept as ``ready_info``); on any
        failure, cancellation included, the child is killed and reaped.
        """
        await self._spawn()
        try:
            self.ready_info = strip_event(await self.next_event("ready", timeout))
        except BaseException:
            await self.kill()
            raise
        self.state = ChildState.RUNNING
        self.log.debug("%s ready: %s", self.name, self.ready_info)
        return self.ready_info

    async def spawn(self) -> None:
        """Spawn a child that announces nothing: RUNNING at once."""
        await self._spawn()
        self.state = ChildState.RUNNING

    async def finish(self, expected: str, timeout: float, *,
                     last_line: str | None = "stop") -> dict[str, Any]:
        """The child's last word: send ``last_line`` and EOF, await ``expected``, reap.

        ``last_line`` None waits for a child that ends by itself (a client's
        result) with its stdin left open.  A command in flight is answered
        first.  The child is reaped whatever happens: closed (EOF, then SIGKILL
        after the rest of ``timeout``, at least 1 s), killed at once when cancelled.
        """
        if self.state is not ChildState.RUNNING:
            raise self.error(f"{self.name}: cannot finish in state {self.state.value}")
        what = (last_line or expected).split()[0]
        deadline = time.monotonic() + timeout
        self.state = ChildState.STOPPING
        try:
            async with self._turn(what, timeout):
                if last_line is not None:
                    self.end_input(last_line)
                return await self._event_by(deadline, expected, what, timeout)
        except (asyncio.CancelledError, KeyboardInterrupt):
            await self.kill()  # no grace for an owner that is going away
            raise
        finally:  # a child that failed gets a moment to exit with its own code
            await self.close(max(1.0, deadline - time.monotonic()))

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
        try:
            if proc is not None and self.state is not ChildState.STOPPED:
                self.end_input()
                try:
                    await reap(proc, timeout)
                except BaseException:
                    await kill_and_reap(proc)  # cancelled or stuck: it must not outlive us
                    raise
        finally:
            if self.registry and proc is not None and proc.returncode is not None:
                self.registry.drop_pid(proc.pid)
            self.state = ChildState.STOPPED
            for task in self._readers:
                task.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            self._readers = []
        return self.returncode

    async def kill(self) -> None:
        """SIGKILL the child if it runs, and reap it.  Idempotent."""
        if self._proc is not None:
            sigkill(self._proc)
        await self.close(KILL_REAP_S)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.kill()

    # -- commands and events --------------------------------------------------

    async def command(self, line: str, expected: str, timeout: float) -> dict[str, Any]:
        """Send ``line`` and return the answer named ``expected``; one command at a time."""
        verb = line.split()[0]
        deadline = time.monotonic() + timeout
        async with self._turn(verb, timeout):
            await self.send(line, deadline - time.monotonic())
            return await self._event_by(deadline, expected, verb, timeout)

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

    async def _spawn(self) -> None:
        if self.state is not ChildState.IDLE:
            raise self.error(f"{self.name}: cannot start in state {self.state.value}")
        self.log.debug("exec %s", " ".join(self.argv))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=1 << 20)
        except OSError as exc:
            self.state = ChildState.STOPPED
            raise self.error(f"cannot run {self.name}: {exc}", cause=exc) from exc
        self.state = ChildState.STARTING
        if self.registry:
            self.registry.add_pid(self._proc.pid)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [asyncio.create_task(self._read_events(self._proc.stdout)),
                         asyncio.create_task(self._read_stderr(self._proc.stderr))]

    @contextlib.asynccontextmanager
    async def _turn(self, verb: str, timeout: float) -> AsyncIterator[None]:
        """Hold the one-command-at-a-time lock; the error type if not had within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await self._lock.acquire()
        except TimeoutError as exc:
            raise self.error(f"{self.name} busy: {verb} not sent within {timeout:g} s",
                             cause=exc) from exc
        try:
            yield
        finally:
            self._lock.release()

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
