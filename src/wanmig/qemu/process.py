"""One QEMU process: launched, spoken to over QMP, always reaped.

``QemuVm`` is a long-lived object with an explicit state::

    CREATED ──start()──> RUNNING ──stop()/kill()──> STOPPED
                            │
                            └── process died on its own ──> DEAD

QEMU runs inside a site's network namespace (``ip netns exec`` execs QEMU, so
the PID we hold is QEMU's own).  Its QMP monitor is a unix socket in the run
directory, reached from the root namespace; the serial console is written to
a log file that ``wait_console`` reads, so the guest's ``ready`` line can be
awaited.  A destination is started with ``-incoming defer`` and receives its
``migrate-incoming`` over QMP once its capabilities are set.

Every QMP command has a timeout and errors come back as ``QemuError`` (or
``QmpTimeout``) naming the VM and the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError
from qemu.qmp.qmp_client import ExecuteError

from ..children import reap, sigkill
from ..errors import QemuError, QmpTimeout
from ..registry import Registry
from .binary import QemuBinary, qemu_binary
from .image import GuestImage


@dataclass(frozen=True)
class VmConfig:
    """Everything needed to launch one QEMU for the guest."""

    name: str
    image: GuestImage
    disk: Path
    ram_mib: int
    mac: str
    tap: str | None            # None: an isolated user-mode NIC (restrict=on), for probes
    ip_cidr: str
    accel: str                 # resolved: "kvm" or "tcg"
    gateway: str | None = None  # the guest's default route (its site router)
    netns: str | None = None
    incoming: bool = False     # start with -incoming defer (a migration destination)
    disk_format: str = "raw"   # the image format of ``disk``: raw or qcow2
    disk_backed: bool = False  # ``disk`` is an overlay: its backing image is DISK_BASE_NODE
    smp: int = 1
    dirty: tuple[int, float] | None = None  # guest memory dirtier (size MiB, MB/s), or none
    diskwrite: tuple[int, float] | None = None  # guest disk rewriter (size MiB, MB/s), or none
    root: str | None = None    # "debian": the guest switches root to its disk (wanmig.root=)
    #: Guest RAM in this file (shared, so the host can read it: ``memory.verify``),
    #: or QEMU's anonymous memory when None.
    ram_file: Path | None = None


#: The node names of the guest disk's format layer (``-drive ...,node-name=``), of the
#: file under it, and of its backing image (qcow2 overlays: the base).
DISK_NODE = "disk0-format"
DISK_FILE_NODE = "disk0-file"
DISK_BASE_NODE = "disk0-base"


def qemu_argv(cfg: VmConfig, run_dir: Path, binary: QemuBinary | None = None) -> list[str]:
    """The command line for ``cfg`` (``binary``: the checked ``qemu_binary()``)."""
    if cfg.accel not in ("kvm", "tcg"):
        raise ValueError(f"accelerator must be resolved to kvm or tcg, got {cfg.accel!r}")
    cpu = "host" if cfg.accel == "kvm" else "max"
    argv = [
        *(binary or qemu_binary()).argv_prefix,
        "-name", f"{cfg.name},debug-threads=on",
        "-accel", cfg.accel, "-cpu", cpu,
        "-m", str(cfg.ram_mib), "-smp", str(cfg.smp),
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-qmp", f"unix:{qmp_socket(run_dir, cfg.name)},server=on,wait=off",
        # a second monitor for observers (tests, an operator's watch): the
        # engine's own connection is never shared
        "-qmp", f"unix:{observer_socket(run_dir, cfg.name)},server=on,wait=off",
        "-serial", f"file:{run_dir / (cfg.name + '.console.log')}",
        "-kernel", str(cfg.image.kernel), "-initrd", str(cfg.image.initrd),
        "-append", cfg.image.cmdline(ip_cidr=cfg.ip_cidr, gateway=cfg.gateway, name="vm",
                                     dirty=cfg.dirty,
                                     diskwrite=cfg.diskwrite, root=cfg.root),
        # cache=none keeps no host-side dirty state in QEMU that a switchover
        # would have to flush (shared storage: both sites see the same image).
        # The format node is named (DISK_NODE) for the storage parts' block jobs
        # and NBD exports; "disk0" is the device's BlockBackend.
        "-drive", (f"file={cfg.disk},format={cfg.disk_format},if=none,id=disk0,"
                   f"node-name={DISK_NODE},file.node-name={DISK_FILE_NODE},"
                   + (f"backing.node-name={DISK_BASE_NODE}," if cfg.disk_backed else "")
                   + "cache=none,aio=threads"),
        "-device", "virtio-blk-pci,drive=disk0",
        "-netdev", (f"tap,id=net0,ifname={cfg.tap},script=no,downscript=no" if cfg.tap
                    else "user,id=net0,restrict=on"),
        "-device", f"virtio-net-pci,netdev=net0,mac={cfg.mac}",
        # the host's agent in the guest (guestd agent): one virtio-serial port, its
        # host end a socket per QEMU (both sites have the same devices: it migrates)
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=agent0,path={agent_socket(run_dir, cfg.name)},server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.wanmig.agent",
    ]
    if cfg.ram_file is not None:
        argv += ["-object", (f"memory-backend-file,id=ram0,size={cfg.ram_mib}M,"
                             f"mem-path={cfg.ram_file},share=on"),
                 "-machine", "memory-backend=ram0"]
    if cfg.incoming:
        # -S: when the stream ends the destination stays paused until the engine
        # sends ``cont`` -- so whether it may have run is the engine's decision
        # (runstate.py), never a guess from events that may arrive late.
        argv += ["-incoming", "defer", "-S"]
    if cfg.netns:
        argv = ["ip", "netns", "exec", cfg.netns, *argv]
    return argv


#: The longest request the guest's agent takes (its line buffer is 256 bytes).
AGENT_REQUEST_MAX = 200


def agent_socket(run_dir: Path, name: str) -> Path:
    """The host end of VM ``name``'s agent port (``QemuVm.agent``)."""
    return run_dir / f"{name}.agent"


def qmp_socket(run_dir: Path, name: str) -> Path:
    """The controller's QMP socket of VM ``name`` (``wanmig recover`` takes it over once
    the controller is dead)."""
    return run_dir / f"{name}.qmp"


def observer_socket(run_dir: Path, name: str) -> Path:
    """The QMP socket left for observers of VM ``name``."""
    return run_dir / f"{name}.observer.qmp"


async def agent_request(run_dir: Path, name: str, request: str, timeout: float = 10.0) -> str:
    """One request to the agent (``guestd agent``) of VM ``name`` over its virtio-serial
    port; its answer after "ok".  QemuError with the agent's own "error ..." line, or if
    it does not answer within ``timeout``.  A request is one line of printable text (one
    answer per line: a second line would answer the next caller)."""
    if len(request) > AGENT_REQUEST_MAX or not request.isprintable():
        raise QemuError(f"guest agent: not a request: {request[:40]!r}"
                        + ("..." if len(request) > 40 else ""), vm=name)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(agent_socket(run_dir, name)))
            try:
                writer.write(request.encode() + b"\n")
                await writer.drain()
                answer = (await reader.readline()).decode(errors="replace").strip()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise QemuError(f"guest agent: {request!r} not answered ({exc or 'timeout'})",
                        vm=name, cause=exc) from exc
    if not answer.startswith("ok"):
        raise QemuError(f"guest agent refused {request!r}: {answer or 'no answer'}", vm=name)
    return answer[2:].strip()


class VmState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    DEAD = "dead"


class QemuVm:
    """A QEMU process and its QMP session; use as ``async with``."""

    def __init__(self, cfg: VmConfig, registry: Registry) -> None:
        self.cfg = cfg
        self.registry = registry
        self.state = VmState.CREATED
        self.log = logging.getLogger(f"wanmig.qemu.{cfg.name}")
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp = QMPClient(cfg.name)
        self.started_at: float | None = None
        #: STOP and RESUME as QEMU announced them, with their monotonic arrival time:
        #: the record shows from these when each copy ran.
        self.run_events: list[tuple[str, float]] = []
        #: Block jobs' progress as the storage parts polled it (``storage.jobs``):
        #: ``(monotonic s, job id, bytes done, bytes in all)``, for the report's plots.
        self.job_progress: list[tuple[float, str, int, int]] = []
        #: When the process was seen gone (reaped; ``time.monotonic()``): a copy that
        #: exited without a STOP runs no more.
        self.exited_at: float | None = None
        self._running = asyncio.Event()   # the last of those was RESUME
        self._event_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc else None
        return (f"QemuVm(name={self.cfg.name!r}, state={self.state.value}, pid={pid}, "
                f"netns={self.cfg.netns!r}, incoming={self.cfg.incoming})")

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """QEMU's exit code once it has exited (negative: killed by that signal)."""
        return self._proc.returncode if self._proc else None

    @property
    def run_dir(self) -> Path:
        return self.registry.run_dir

    @property
    def console_path(self) -> Path:
        return self.run_dir / f"{self.name}.console.log"

    @property
    def stderr_path(self) -> Path:
        return self.run_dir / f"{self.name}.stderr.log"

    @property
    def qmp(self) -> QMPClient:
        """The raw ``qemu.qmp`` client, for event listeners."""
        return self._qmp

    # -- lifetime ---------------------------------------------------------

    async def start(self, timeout: float = 30.0, *, qmp: bool = True) -> None:
        """Launch QEMU and connect QMP; raises QemuError if either fails in time.

        ``qmp=False`` launches the process only, for a probe that just reads the
        console (``qemu.accel``): there a QEMU that dies as it starts is the
        answer, and connecting to it would only have qemu.qmp log the dropped
        handshake as an ERROR.
        """
        if self.state is not VmState.CREATED:
            raise QemuError(f"cannot start a VM in state {self.state.value}", vm=self.name)
        argv = qemu_argv(self.cfg, self.run_dir)
        self.log.debug("exec %s", " ".join(argv))
        self.console_path.unlink(missing_ok=True)
        with self.stderr_path.open("wb") as err:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True)
        self.registry.add_pid(self._proc.pid)
        self.started_at = time.monotonic()
        self.state = VmState.RUNNING
        if not qmp:
            return
        try:
            await self._connect_qmp(timeout)
        except BaseException:
            await self.kill()
            raise
        self._event_task = asyncio.create_task(self._record_run_events())

    async def _record_run_events(self) -> None:
        with self._qmp.listener(("STOP", "RESUME")) as events:
            async for event in events:
                name = str(event["event"])
                self.run_events.append((name, time.monotonic()))
                (self._running.set if name == "RESUME" else self._running.clear)()

    async def wait_resumed(self, timeout: float) -> float:
        """Until QEMU announces RESUME (the guest's vCPUs run); its arrival time.

        The event, not ``query-status``: a postcopy destination's monitor answers
        late while its main loop waits for pages over the WAN, though the guest
        already runs (seen here: 150-980 ms late).
        """
        deadline = time.monotonic() + timeout
        while not self._running.is_set():
            self._check_alive()   # a QEMU that died does not keep us waiting
            if time.monotonic() > deadline:
                raise QmpTimeout(f"no RESUME within {timeout:g} s", vm=self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._running.wait(), timeout=0.05)
        return next(at for name, at in reversed(self.run_events) if name == "RESUME")

    async def _connect_qmp(self, timeout: float) -> None:
        sock = str(qmp_socket(self.run_dir, self.name))
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if not os.path.exists(sock):  # QEMU has not bound it yet: no point connecting
                if time.monotonic() > deadline:
                    raise QmpTimeout(f"QMP socket {sock} not created after {timeout:.0f}s",
                                     vm=self.name)
                await asyncio.sleep(0.02)
                continue
            try:
                await asyncio.wait_for(self._qmp.connect(sock), timeout=5.0)
                return
            except (QMPError, OSError, asyncio.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise QmpTimeout(f"QMP socket not ready after {timeout:.0f}s",
                                     vm=self.name, cause=exc) from exc
                await asyncio.sleep(0.05)

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.returncode is not None:
            self.state = VmState.DEAD
            raise QemuError(f"QEMU exited with code {self._proc.returncode}: "
                            f"{self.stderr_tail() or '(no output)'}", vm=self.name)

    def stderr_tail(self, lines: int = 3) -> str:
        return " | ".join(tail_lines(self.stderr_path, lines))

    def console_tail(self, lines: int = 20) -> list[str]:
        """The guest's last serial console lines (a kernel's last words, say)."""
        return tail_lines(self.console_path, lines)

    async def wait_console(self, marker: str, timeout: float) -> float:
        """Wait until the serial console prints ``marker``; seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if marker in self.console_path.read_text(errors="replace"):
                    return time.monotonic() - (self.started_at or time.monotonic())
            except FileNotFoundError:
                pass
            await asyncio.sleep(0.1)
        raise QmpTimeout(f"guest did not print {marker!r} within {timeout:.0f}s "
                         f"(console: {self.console_path})", vm=self.name)

    def console_lines(self) -> list[str]:
        """Every line this QEMU's guest printed on its serial console; none if unreadable."""
        try:
            return self.console_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    async def wait_console_lines(self, prefix: str, count: int, timeout: float) -> float:
        """Wait until ``count`` console lines start with ``prefix``; seconds waited."""
        start = time.monotonic()
        while sum(line.startswith(prefix) for line in self.console_lines()) < count:
            self._check_alive()
            if time.monotonic() - start > timeout:
                raise QmpTimeout(f"guest printed fewer than {count} lines {prefix!r}... "
                                 f"within {timeout:g} s (console: {self.console_path})",
                                 vm=self.name)
            await asyncio.sleep(0.1)
        return time.monotonic() - start

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask QEMU to quit; kill it if it does not exit in time.  Idempotent."""
        if self._proc is None or self.state in (VmState.STOPPED, VmState.CREATED):
            self.state = VmState.STOPPED if self._proc else self.state
            return
        if self._proc.returncode is None and self._qmp.runstate.name == "RUNNING":
            try:
                await asyncio.wait_for(self._qmp.execute("quit"), timeout=timeout)
            except (QMPError, asyncio.TimeoutError, OSError, EOFError):
                pass  # the connection drops as QEMU exits; kill() below covers the rest
        await self._reap(timeout)

    async def kill(self) -> None:
        """SIGKILL the process (used on failure and to inject faults).  Idempotent."""
        if self._proc is not None:
            sigkill(self._proc)
        await self._reap(5.0)

    async def _reap(self, timeout: float) -> None:
        if self._proc is None:
            return
        await reap(self._proc, timeout)
        if self.exited_at is None:
            self.exited_at = time.monotonic()
        if self._event_task is not None:
            self._event_task.cancel()
            await asyncio.gather(self._event_task, return_exceptions=True)
        try:
            await asyncio.wait_for(self._qmp.disconnect(), timeout=2.0)
        except (QMPError, asyncio.TimeoutError, OSError, EOFError):
            pass  # the reader saw QEMU go away first; qemu.qmp re-raises that here
        self.registry.drop_pid(self._proc.pid)
        self.state = VmState.STOPPED

    async def __aenter__(self) -> "QemuVm":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- QMP ----------------------------------------------------------------

    async def execute(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 30.0) -> Any:
        """Run a QMP command; QemuError / QmpTimeout name the VM and the command."""
        try:
            return await asyncio.wait_for(self._qmp.execute(cmd, args), timeout=timeout)
        except asyncio.TimeoutError as exc:
            raise QmpTimeout(f"{cmd} did not answer within {timeout:.0f}s",
                             vm=self.name, cause=exc) from exc
        except ExecuteError as exc:
            raise QemuError(f"{cmd} failed: {exc}", vm=self.name, cause=exc) from exc
        except QMPError as exc:
            self._check_alive()
            raise QemuError(f"{cmd}: QMP connection lost ({exc})", vm=self.name,
                            cause=exc) from exc

    async def agent(self, request: str, timeout: float = 10.0) -> str:
        """One request to the guest's agent (``agent_request``)."""
        return await agent_request(self.run_dir, self.name, request, timeout)

    async def run_state(self, timeout: float = 10.0) -> str:
        """QEMU's run state: 'running', 'paused', 'inmigrate', 'postmigrate', ..."""
        status = await self.execute("query-status", timeout=timeout)
        return str(status["status"])

    async def wait_run_state(self, wanted: str, *, passing: Collection[str] = (),
                             timeout: float, poll_s: float = 0.002) -> None:
        """Poll until QEMU reports ``wanted``.  QemuError if it reports a state not in
        ``passing`` on the way, QmpTimeout after ``timeout``.  Polled, not awaited as an
        event: entering ``paused`` at the end of an incoming migration emits none."""
        deadline = time.monotonic() + timeout
        while (state := await self.run_state(timeout=max(1.0, deadline - time.monotonic()))) \
                != wanted:
            if state not in passing:
                raise QemuError(f"in state {state!r}, waiting for {wanted!r}", vm=self.name)
            if time.monotonic() > deadline:
                raise QmpTimeout(f"still {state!r}, not {wanted!r}, after {timeout:.1f} s",
                                 vm=self.name)
            await asyncio.sleep(poll_s)

    async def disk_writes(self, drive: str = "disk0") -> int:
        """Write requests the guest has made to ``drive`` in this QEMU process."""
        stats = await self.execute("query-blockstats")
        return sum(int(s["stats"]["wr_operations"]) for s in stats if s.get("device") == drive)


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log file; none if it cannot be read."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return []
    return text[-lines:]
