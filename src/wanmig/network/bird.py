"""BIRD, the routing daemon the ``route`` mode runs on each router (Debian's ``bird2``).

Each router of the testbed (A's, B's and the client site's) runs one BIRD in its
namespace, and the three speak eBGP to each other over their WAN links (AS
65001, 65002, 65003: one per site).  BGP carries only the VMs' host routes
(/32s of the VM's home subnet); the sites' own subnets stay the testbed's
static routes, so a broken session never cuts the migration's path.  A host
route is a static protocol in the BIRD of the site where the VM runs
(``vm_here``, disabled until the VM moves there), exported to that router's
kernel and to its peers; every router exports what it learned to its kernel
(the client's with the client's address as the source).

``render_config`` is pure (unit-tested); ``Bird`` runs one daemon
(``bird -f``, its command line names the run directory: ``wanmig clean``
finds it) and talks to it over its control socket with ``BirdControl``, the
control protocol spoken directly rather than through ``birdc``: a switchover
step is then one request on an open socket, not a process started.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..children import JsonLinesChild
from ..errors import NetworkError
from ..registry import Registry

log = logging.getLogger("wanmig.network")

#: The static protocol holding the VM's host route at the site where the VM runs.
HOST_ROUTE_PROTOCOL = "vm_here"
#: Quick timers: a session is up about a second after both daemons started.
TIMERS = ("hold time 9; keepalive time 3; connect delay time 1; connect retry time 1; "
          "error wait time 1, 5;")
CONTROL_TIMEOUT_S = 5.0
STOP_GRACE_S = 3.0
_REPLY = re.compile(r"^(\d{4})([ -])(.*)$")


@dataclass(frozen=True)
class Peer:
    name: str        # the BGP protocol's name (``to_b``)
    local_ip: str
    ip: str
    asn: int


@dataclass(frozen=True)
class BirdConfig:
    """One router's BIRD: its identity, its BGP peers, the host routes it may announce."""

    router_id: str
    asn: int
    peers: tuple[Peer, ...]
    host_routes: tuple[str, ...] = ()     # /32s for HOST_ROUTE_PROTOCOL (disabled)
    host_route_dev: str = "lan0"          # where those hosts are
    prefsrc: str | None = None            # source address of the routes it installs
    host_prefix: str = "10.1.0.0/24"      # the subnet whose /32s BGP carries
    #: The sessions' TCP-MD5 secret (RFC 2385; one per run): a segment without it is
    #: dropped by the kernel, so nobody on the WAN can inject or reset a route.
    password: str | None = None
    extra: list[str] = field(default_factory=list)


def render_config(cfg: BirdConfig) -> str:
    """``bird.conf`` for ``cfg``."""
    carried = f"net ~ [ {cfg.host_prefix}{{32,32}} ]"
    kernel_export = (f"filter {{ if {carried} then {{ krt_prefsrc = {cfg.prefsrc}; accept; }} "
                     f"reject; }}" if cfg.prefsrc else f"where {carried}")
    lines = [
        f"router id {cfg.router_id};",
        "log stderr { warning, error, fatal, bug };",
        "protocol device { scan time 10; }",
        f"protocol kernel {{ ipv4 {{ import none; export {kernel_export}; }}; }}",
    ]
    if cfg.host_routes:
        routes = " ".join(f'route {net} via "{cfg.host_route_dev}";' for net in cfg.host_routes)
        lines.append(f"protocol static {HOST_ROUTE_PROTOCOL} {{ disabled; ipv4; {routes} }}")
    secret = f'password "{cfg.password}"; ' if cfg.password else ""
    for p in cfg.peers:
        # ``strict bind``: each session listens on its own link address only
        lines.append(
            f"protocol bgp {p.name} {{ local {p.local_ip} as {cfg.asn}; "
            f"neighbor {p.ip} as {p.asn}; strict bind yes; {secret}{TIMERS} "
            f"ipv4 {{ import where {carried}; export where {carried}; }}; }}")
    return "\n".join([*lines, *cfg.extra]) + "\n"


class BirdControl:
    """One connection to BIRD's control socket: a request, its reply lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, socket_path: Path, timeout: float = CONTROL_TIMEOUT_S) -> BirdControl:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(str(socket_path))
                control = cls(reader, writer)
                await control._reply("greeting")  # "0001 BIRD 2.0.12 ready."
        except (OSError, TimeoutError) as exc:
            raise NetworkError(f"BIRD's control socket {socket_path}: {exc or 'no answer'}",
                               cause=exc) from exc
        return control

    async def request(self, command: str, timeout: float = CONTROL_TIMEOUT_S) -> list[str]:
        """The reply's text lines; NetworkError for an error reply (codes 8xxx, 9xxx)."""
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    self.writer.write(command.encode() + b"\n")
                    await self.writer.drain()
                    return await self._reply(command)
            except (OSError, TimeoutError) as exc:
                raise NetworkError(f"BIRD did not answer {command!r}: {exc or 'timeout'}",
                                   cause=exc) from exc

    async def _reply(self, command: str) -> list[str]:
        lines: list[str] = []
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise NetworkError(f"BIRD closed its control socket during {command!r}")
            line = raw.decode(errors="replace").rstrip("\n")
            m = _REPLY.match(line)
            if m is None:          # a continuation: " text"
                lines.append(line[1:])
                continue
            code, more, text = m.groups()
            if code[0] in "89":
                raise NetworkError(f"BIRD refused {command!r}: {text} (code {code})")
            lines.append(text)
            if more == " ":
                return lines

    def close(self) -> None:
        self.writer.close()


def session_states(lines: list[str]) -> dict[str, str]:
    """``show protocols`` lines -> {BGP protocol: its state and info} (``Established``)."""
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "BGP":
            out[parts[0]] = " ".join(parts[5:]) if len(parts) > 5 else parts[3]
    return out


def route_gateways(lines: list[str]) -> list[str]:
    """The next hops in ``show route for NET`` lines (``via 172.30.2.1 on rb0``)."""
    return re.findall(r"\bvia (\d+\.\d+\.\d+\.\d+)", "\n".join(lines))


class Bird:
    """One BIRD daemon in ``netns``; ``start`` until its sessions are up, ``stop``."""

    def __init__(self, name: str, netns: str, cfg: BirdConfig, run_dir: Path,
                 registry: Registry | None = None) -> None:
        self.name, self.netns, self.cfg = name, netns, cfg
        self.conf = run_dir / f"bird-{name}.conf"
        self.socket = run_dir / f"bird-{name}.ctl"
        argv = ["ip", "netns", "exec", netns, "bird", "-f", "-c", str(self.conf),
                "-s", str(self.socket)]
        self.child = JsonLinesChild(argv, name=f"BIRD at {name}", error=NetworkError,
                                    registry=registry, log=log)
        self.control: BirdControl | None = None

    def __repr__(self) -> str:
        return f"Bird({self.name!r}, {self.child!r})"

    async def start(self, timeout: float = CONTROL_TIMEOUT_S) -> None:
        """Write the config, run the daemon, open its control socket."""
        self.conf.write_text(render_config(self.cfg))
        await self.child.spawn()
        deadline = time.monotonic() + timeout
        while self.control is None:
            if self.child.returncode is not None:
                raise NetworkError(f"BIRD at {self.name} exited (code {self.child.returncode}): "
                                   f"{self.child.stderr_tail()}")
            if self.socket.exists():
                try:
                    self.control = await BirdControl.open(self.socket)
                    break
                except NetworkError:
                    pass
            if time.monotonic() > deadline:
                raise NetworkError(f"BIRD at {self.name} opened no control socket within "
                                   f"{timeout:g} s: {self.child.stderr_tail()}")
            await asyncio.sleep(0.02)

    async def request(self, command: str) -> list[str]:
        if self.control is None:
            raise NetworkError(f"BIRD at {self.name} is not running")
        return await self.control.request(command)

    async def sessions(self) -> dict[str, str]:
        return session_states(await self.request("show protocols"))

    async def gateways(self, net: str) -> list[str]:
        """The next hops BIRD has chosen for ``net`` (empty: no route)."""
        try:
            return route_gateways(await self.request(f"show route for {net}"))
        except NetworkError as exc:
            if "Network not found" in str(exc):
                return []
            raise

    async def stop(self) -> None:
        """``down`` over the control socket (BGP says goodbye), then the process is
        reaped (SIGKILL if it lingers).  Idempotent."""
        if self.control is not None:
            try:
                await self.control.request("down", timeout=STOP_GRACE_S)
            except NetworkError:
                pass  # it closes the socket as it goes: the reply may not come
            self.control.close()
            self.control = None
        await self.child.close(STOP_GRACE_S)


async def wait_established(birds: list[Bird], timeout: float) -> float:
    """Until every BGP session of every daemon is ``Established``; seconds it took.
    NetworkError naming the sessions that are not, with their state, after ``timeout``."""
    start = time.monotonic()
    while True:
        pending = {}
        for bird in birds:
            for name, state in (await bird.sessions()).items():
                if "Established" not in state:
                    pending[f"{bird.name}.{name}"] = state
        if not pending:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise NetworkError("BGP sessions not up within "
                               f"{timeout:g} s: " + "; ".join(f"{k}: {v}" for k, v in
                                                            sorted(pending.items())))
        await asyncio.sleep(0.1)
