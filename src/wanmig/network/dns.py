"""The dns-tunnel mode's DNS: Knot DNS (Debian's ``knot``) serving the VM's zone, and
RFC 2136 updates signed with TSIG (dnspython).

``KnotServer`` runs one authoritative ``knotd`` in a namespace (its command
line names the run directory: ``wanmig clean`` finds it), for one zone holding
the VM's A record; dynamic updates are allowed only with the run's TSIG key
(HMAC-SHA256, a fresh secret per run).  ``update_address`` replaces the
record (address and TTL); ``lookup`` asks for it.  Both send from a namespace
of the testbed (``in_netns``: the thread that sends enters it), since the
server is only reachable there; a refused update is a ``NetworkError`` that
says what the server answered (``NOTAUTH``: a wrong key).

``render_config`` and ``render_zone`` are pure (unit-tested).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from ..children import JsonLinesChild
from ..errors import NetworkError
from ..registry import Registry

log = logging.getLogger("wanmig.network")

ZONE = "wanmig.test."
VM_NAME = "vm"
QUERY_TIMEOUT_S = 2.0
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 3.0
T = TypeVar("T")


@dataclass(frozen=True)
class TsigKey:
    name: str
    secret: str      # base64

    @classmethod
    def fresh(cls, name: str = "wanmig-update") -> TsigKey:
        return cls(name, base64.b64encode(secrets.token_bytes(32)).decode())

    @property
    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        return {dns.name.from_text(self.name):
                dns.tsig.Key(self.name, self.secret, dns.tsig.HMAC_SHA256)}


def render_zone(zone: str, ns_ip: str, vm_ip: str, ttl: int, serial: int = 1) -> str:
    """The zone file: SOA, the server's own name and the VM's A record with ``ttl``."""
    return "\n".join([
        f"$ORIGIN {zone}",
        "$TTL 300",
        f"@ SOA ns.{zone} hostmaster.{zone} {serial} 3600 600 86400 1",
        "@ NS ns",
        f"ns A {ns_ip}",
        f"{VM_NAME} {ttl} A {vm_ip}",
    ]) + "\n"


def render_config(run_dir: Path, listen: str, zone: str, key: TsigKey) -> str:
    """knot.conf: one zone from ``run_dir``, updates only with ``key``."""
    return "\n".join([
        "server:",
        f'    rundir: "{run_dir}"',
        f"    listen: {listen}@53",
        "log:",
        "  - target: stderr",
        "    any: warning",
        "database:",
        f'    storage: "{run_dir}"',
        "key:",
        f"  - id: {key.name}",
        "    algorithm: hmac-sha256",
        f"    secret: {key.secret}",
        "acl:",
        "  - id: wanmig-update",
        f"    key: {key.name}",
        "    action: update",
        "zone:",
        f"  - domain: {zone}",
        f'    storage: "{run_dir}"',
        '    file: "knot-zone.txt"',
        "    acl: wanmig-update",
        "    zonefile-sync: -1",
        "    journal-content: changes",
    ]) + "\n"


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(netns: str, call: Callable[[], T]) -> T:
    """``call()`` with the calling thread in ``netns`` (the sockets it makes are there),
    then back in its own: setns is per thread, so threads may do this side by side."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns}") as there:
        _setns(there.fileno())
        try:
            return call()
        finally:
            _setns(home.fileno())


class KnotServer:
    """One ``knotd`` in ``netns`` answering for ``zone`` on ``listen``."""

    def __init__(self, netns: str, run_dir: Path, listen: str, vm_ip: str, ttl: int,
                 key: TsigKey, registry: Registry | None = None, zone: str = ZONE) -> None:
        self.netns, self.listen, self.zone, self.key = netns, listen, zone, key
        self.vm_ip, self.ttl = vm_ip, ttl
        self.dir = run_dir / "knot"
        self.conf = self.dir / "knot.conf"
        argv = ["ip", "netns", "exec", netns, "knotd", "-c", str(self.conf)]
        self.child = JsonLinesChild(argv, name="Knot DNS", error=NetworkError,
                                    registry=registry, log=log)

    def __repr__(self) -> str:
        return f"KnotServer({self.zone} on {self.listen} in {self.netns}, {self.child!r})"

    @property
    def fqdn(self) -> str:
        return f"{VM_NAME}.{self.zone}"

    async def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Write the config and zone, run knotd, until it answers for the VM's name."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(render_config(self.dir, self.listen, self.zone, self.key))
        (self.dir / "knot-zone.txt").write_text(
            render_zone(self.zone, self.listen, self.vm_ip, self.ttl))
        await self.child.spawn()
        deadline = time.monotonic() + timeout
        while True:
            if self.child.returncode is not None:
                raise NetworkError(f"Knot DNS exited (code {self.child.returncode}): "
                                   f"{self.child.stderr_tail()}")
            try:
                await lookup(self.netns, self.listen, self.fqdn, timeout=0.5)
                return
            except NetworkError:
                if time.monotonic() > deadline:
                    raise NetworkError(f"Knot DNS did not answer within {timeout:g} s: "
                                       f"{self.child.stderr_tail()}") from None
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """SIGTERM (knotd ends cleanly on it), then reaped; SIGKILL after a grace.
        Idempotent."""
        pid = self.child.pid
        if pid is not None and self.child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        await self.child.close(STOP_GRACE_S)


async def lookup(netns: str, server: str, fqdn: str, *,
                 timeout: float = QUERY_TIMEOUT_S) -> tuple[str, int]:
    """The A record of ``fqdn`` at ``server`` (asked from ``netns``): address and TTL."""
    query = dns.message.make_query(fqdn, dns.rdatatype.A)

    def ask() -> dns.message.Message:
        return dns.query.udp(query, server, timeout=timeout)

    try:
        answer = await asyncio.to_thread(in_netns, netns, ask)
    except (dns.exception.DNSException, OSError) as exc:
        raise NetworkError(f"DNS server {server} did not answer for {fqdn}: {exc}",
                           cause=exc) from exc
    for rrset in answer.answer:
        if rrset.rdtype == dns.rdatatype.A:
            return str(rrset[0]), int(rrset.ttl)
    raise NetworkError(f"DNS server {server} has no address for {fqdn} "
                       f"({dns.rcode.to_text(answer.rcode())})")


async def update_address(netns: str, server: str, key: TsigKey, address: str, ttl: int, *,
                         zone: str = ZONE, timeout: float = QUERY_TIMEOUT_S) -> None:
    """RFC 2136: the VM's A record becomes ``address`` with ``ttl``, signed with ``key``
    (sent from ``netns``).  NetworkError with the server's answer if it is refused."""
    update = dns.update.UpdateMessage(zone, keyring=key.keyring,
                                      keyname=dns.name.from_text(key.name),
                                      keyalgorithm=dns.tsig.HMAC_SHA256)
    update.replace(VM_NAME, ttl, "A", address)

    def send() -> dns.message.Message:
        return dns.query.tcp(update, server, timeout=timeout)

    try:
        answer = await asyncio.to_thread(in_netns, netns, send)
    except dns.tsig.PeerError as exc:
        raise NetworkError(f"DNS update refused by {server}: the server does not accept "
                           f"the key {key.name!r} ({type(exc).__name__})", cause=exc) from exc
    except (dns.exception.DNSException, OSError) as exc:
        raise NetworkError(f"DNS update to {server} failed: {exc}", cause=exc) from exc
    if answer.rcode() != dns.rcode.NOERROR:
        raise NetworkError(f"DNS update refused by {server}: "
                           f"{dns.rcode.to_text(answer.rcode())}")
