"""Layer-2 tunnels across the WAN: encrypted (OpenVPN, tap) by default, or plain VXLAN.

The network modes carry the VM's frames across the WAN in a tunnel: ``l2-extend``
stretches A's subnet between the hypervisors' bridges, ``mobile-ip`` and
``dns-tunnel`` send what reaches the home agent (router A) to B's bridge.  On
an untrusted WAN those frames -- the client's traffic to the VM -- must be
encrypted and both ends authenticated.  This kernel has no ESP, WireGuard or
MACsec, so the encrypted tunnel is OpenVPN (Debian's ``openvpn``) in tap mode,
point to point over UDP, one process per end:

* TLS 1.2 or newer for the control channel, AES-256-GCM (or AES-128-GCM,
  ChaCha20-Poly1305) for the frames; each end's certificate is issued by the
  deployment CA for this run (``memory.tls.issue_endpoint``), the far end must
  present a certificate for the other role (``remote-cert-tls``) with the exact
  common name of this run's other end (``verify-x509-name``): a certificate
  from another CA, or the CA's certificate for anybody else, is refused;
* each end binds only its own WAN address and answers only the other's;
* the tap's MTU is 1500 and no MSS is clamped: the testbed's underlay carries
  1600-byte packets, so a full frame crosses in one datagram.

``[network] encrypt = false`` gives the plain VXLAN of the same shape (what the
encryption costs is ``wanmig bench tunnel``).  A ``Tunnel`` is started by the
part that needs it at ``prepare`` and stopped at its ``close``; an OpenVPN
child's command line names the run directory, so ``wanmig clean`` finds it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..children import JsonLinesChild
from ..context import RunContext
from ..errors import NetworkError
from ..memory.tls import DeploymentCa, endpoint_files, issue_endpoint
from ..registry import Registry
from ..testbed.netns import link_up
from ..testbed.topology import VXLAN_PORT

log = logging.getLogger("wanmig.network.tunnel")

OPENVPN_PORT = 1194
CIPHERS = "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305"
START_TIMEOUT_S = 20.0
READY = "Initialization Sequence Completed"
NEGOTIATED = re.compile(r"Data Channel: cipher '([^']+)'")
#: What OpenVPN logs when it refuses the other end's certificate.
REFUSALS = ("VERIFY ERROR", "VERIFY X509NAME ERROR", "VERIFY KU ERROR", "VERIFY EKU ERROR",
            "TLS Error", "certificate verify failed")


@dataclass(frozen=True)
class TunnelEnd:
    """One end: its namespace, its WAN address, and the bridge its port joins (None:
    a routed interface)."""

    netns: str
    ip: str
    bridge: str | None = None


@dataclass(frozen=True)
class Credentials:
    """Which CA issues each end's certificate and which CA each end trusts (``of``: the
    deployment CA for all; tests make one end foreign)."""

    server_ca: DeploymentCa
    client_ca: DeploymentCa
    trusted: DeploymentCa
    #: The common name the server end requires of the client (default: this run's).
    client_name_expected: str | None = None

    @classmethod
    def of(cls, ca: DeploymentCa) -> Credentials:
        return cls(ca, ca, ca)


class Tunnel:
    """A layer-2 tunnel named ``ifname`` at both ends (``start``/``stop``)."""

    def __init__(self, name: str, ifname: str, server: TunnelEnd, client: TunnelEnd, *,
                 encrypt: bool, vni: int, registry: Registry) -> None:
        self.name, self.ifname, self.vni = name, ifname, vni
        self.server, self.client = server, client
        self.encrypt = encrypt
        self.registry = registry
        self.run_dir = registry.run_dir
        self._children: dict[str, JsonLinesChild] = {}
        self.setup_ms: float | None = None
        #: The data channel's cipher as OpenVPN negotiated it (its log), once up.
        self.cipher: str | None = None

    def __repr__(self) -> str:
        kind = "openvpn" if self.encrypt else "vxlan"
        return f"Tunnel({self.name!r}, {kind}, {self.server.ip} <-> {self.client.ip})"

    def record(self) -> dict[str, object]:
        """The network block's fields for this tunnel."""
        return {"tunnel": self.describe(), "tunnel_encrypted": self.encrypt,
                "tunnel_setup_ms": self.setup_ms}

    def describe(self) -> str:
        return (f"openvpn tap, {self.cipher or 'cipher not negotiated'}, mutual TLS"
                if self.encrypt else f"vxlan {self.vni} (not encrypted)")

    async def start(self, creds: Credentials | None = None,
                    timeout: float = START_TIMEOUT_S) -> None:
        """Both ends up and, encrypted (``creds`` needed), the handshake done;
        NetworkError otherwise (with what OpenVPN logged: a refused certificate says so)."""
        started = time.monotonic()
        try:
            if self.encrypt:
                if creds is None:
                    raise NetworkError(f"{self.name}: an encrypted tunnel needs credentials")
                await self._openvpn(creds, timeout)
            else:
                for end, peer in ((self.server, self.client), (self.client, self.server)):
                    await self._vxlan(end, peer)
            for end in (self.server, self.client):
                await self._attach(end)
        except BaseException:
            await self.stop()
            raise
        self.setup_ms = round((time.monotonic() - started) * 1000, 1)

    @property
    def pids(self) -> list[int]:
        """The OpenVPN processes (none for VXLAN, which is the kernel's)."""
        return [c.pid for c in self._children.values() if c.pid is not None]

    async def stop(self) -> None:
        """Stop both OpenVPN ends (their taps go with them) or remove both VXLAN ends.
        Idempotent; an end whose namespace is gone is gone too."""
        for child in self._children.values():
            await child.kill()
        self._children.clear()
        if not self.encrypt:
            for end in (self.server, self.client):
                try:
                    async with AsyncIPRoute(netns=end.netns) as ipr:
                        await ipr.link("del", ifname=self.ifname)
                except (NetlinkError, OSError):
                    pass

    # -- VXLAN ----------------------------------------------------------------

    async def _vxlan(self, end: TunnelEnd, peer: TunnelEnd) -> None:
        try:
            async with AsyncIPRoute(netns=end.netns) as ipr:
                await ipr.link("add", ifname=self.ifname, kind="vxlan", vxlan_id=self.vni,
                               vxlan_local=end.ip, vxlan_group=peer.ip, vxlan_port=VXLAN_PORT)
        except NetlinkError as exc:
            raise NetworkError(f"{self.name}: cannot make the VXLAN end in {end.netns}: {exc}",
                               cause=exc) from exc

    async def _attach(self, end: TunnelEnd) -> None:
        try:
            async with AsyncIPRoute(netns=end.netns) as ipr:
                extra = {}
                if end.bridge is not None:
                    extra["master"] = (await ipr.link_lookup(ifname=end.bridge))[0]
                await link_up(ipr, self.ifname, mtu=1500, **extra)
        except (NetlinkError, IndexError) as exc:
            raise NetworkError(f"{self.name}: cannot bring {self.ifname} up in {end.netns}: "
                               f"{exc}", cause=exc) from exc

    # -- OpenVPN --------------------------------------------------------------

    def _common_name(self, role: str) -> str:
        return f"wanmig-{self.name}-{role}-{self.registry.run_id}"

    def _log(self, role: str) -> Path:
        return self.run_dir / f"{self.name}-{role}.log"

    async def _openvpn(self, creds: Credentials, timeout: float) -> None:
        names = {"server": self._common_name("server"),
                 "client": creds.client_name_expected or self._common_name("client")}
        for role, end, peer, ca in (("server", self.server, self.client, creds.server_ca),
                                    ("client", self.client, self.server, creds.client_ca)):
            creds_dir = await asyncio.to_thread(
                issue_endpoint, ca, self.run_dir / f"{self.name}-{role}", role,
                ips=[end.ip] if role == "server" else (), name=self._common_name(role),
                trust=[creds.trusted])
            other = "client" if role == "server" else "server"
            conf = self.run_dir / f"{self.name}-{role}.conf"
            conf.write_text(render_openvpn(
                role=role, ifname=self.ifname, local=end.ip, remote=peer.ip,
                creds_dir=creds_dir, peer_name=names[other], log=self._log(role)))
            self._log(role).unlink(missing_ok=True)
            child = JsonLinesChild(["ip", "netns", "exec", end.netns, "openvpn", "--config",
                                    str(conf)], name=f"OpenVPN {self.name} {role}",
                                   error=NetworkError, registry=self.registry, log=log)
            self._children[role] = child
            await child.spawn()
        await self._ready(timeout)

    async def _ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(self._children)
        while waiting:
            for role in sorted(waiting):
                child, text = self._children[role], self._read_log(role)
                if READY in text:
                    waiting.discard(role)
                    if found := NEGOTIATED.search(text):
                        self.cipher = found.group(1)
                elif child.returncode is not None:
                    raise NetworkError(f"{self.name}: OpenVPN ({role}) exited "
                                       f"(code {child.returncode}): {self._tail(role)}")
            if waiting and time.monotonic() > deadline:
                refused = [f"{role}: {line}" for role in ("server", "client")
                           for line in self._read_log(role).splitlines()
                           if any(r in line for r in REFUSALS)]
                raise NetworkError(f"{self.name}: the encrypted tunnel did not come up within "
                                   f"{timeout:g} s" + (": refused: " + " | ".join(refused[:4])
                                                       if refused else
                                                       f": {self._tail('server')}"))
            await asyncio.sleep(0.05)

    def _read_log(self, role: str) -> str:
        try:
            return self._log(role).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self, role: str, lines: int = 3) -> str:
        return " | ".join(self._read_log(role).splitlines()[-lines:]) or "no log"


def render_openvpn(*, role: str, ifname: str, local: str, remote: str, creds_dir: Path,
                   peer_name: str, log: Path, port: int = OPENVPN_PORT) -> str:
    """One end's OpenVPN configuration (pure): a point-to-point tap over UDP with
    mutual TLS, bound to ``local`` and talking to ``remote`` only."""
    ca_file, cert_file, key_file = endpoint_files(role)   # type: ignore[arg-type]
    other = "client" if role == "server" else "server"
    lines = [
        f"dev {ifname}", "dev-type tap", "proto udp4",
        f"local {local}", f"lport {port}", f"remote {remote} {port}",
        f"tls-{role}", *(["dh none"] if role == "server" else []),
        f"ca {creds_dir / ca_file}", f"cert {creds_dir / cert_file}",
        f"key {creds_dir / key_file}",
        f"remote-cert-tls {other}", f"verify-x509-name {peer_name} name",
        "tls-version-min 1.2", f"data-ciphers {CIPHERS}",
        "tun-mtu 1500", "mssfix 0", "txqueuelen 1000",
        # a WAN outage is ridden out: no restart on silence, keepalives once a second
        "ping 1", "persist-tun", "persist-key",
        "script-security 1", "verb 3", "suppress-timestamps", f"log {log}",
    ]
    return "\n".join(lines) + "\n"


async def start_tunnel(ctx: RunContext, tunnel: Tunnel) -> Tunnel:
    """A network mode's tunnel (made with ``encrypt = [network] encrypt``), up and
    handshaken with this deployment's CA."""
    creds = (Credentials.of(await asyncio.to_thread(DeploymentCa.load_or_create, ctx.pki_dir))
             if tunnel.encrypt else None)
    ctx.ui.step(f"{tunnel.name}: tunnel {tunnel.server.ip} <-> {tunnel.client.ip}"
                f" ({'OpenVPN, mutual TLS' if tunnel.encrypt else 'VXLAN, not encrypted'})")
    await tunnel.start(creds)
    return tunnel
