"""Network namespaces and the commands run inside them.

A ``Namespace`` is registered with the run's ``Registry`` before it is created
and unregistered after it is deleted.  Deleting a namespace deletes every
interface inside it (and the far end of its veth pairs), so teardown is
"stop the processes, delete the namespaces".

The helpers below are the building blocks of every topology (the testbed's,
the WAN bench's): ``owned_namespaces`` for the lifetime, ``add_veth`` and
``join_through`` for the wires, ``link_up`` and ``configure_host`` for the ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2 import netns as _netns
from pyroute2.netlink.exceptions import NetlinkError

from ..children import run_command
from ..errors import NetworkError
from ..registry import Registry, netns_exists, remove_netns

log = logging.getLogger("wanmig.testbed")


class Namespace:
    """One network namespace owned by a run."""

    def __init__(self, name: str, registry: Registry) -> None:
        if len(name) > 32:
            raise NetworkError(f"namespace name too long: {name!r}")
        self.name = name
        self.registry = registry
        self.created = False

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, created={self.created})"

    async def create(self) -> None:
        if netns_exists(self.name):
            raise NetworkError(f"namespace {self.name} already exists (run 'wanmig clean')")
        self.registry.add_netns(self.name)
        try:
            _netns.create(self.name)
        except OSError as exc:
            raise NetworkError(f"cannot create namespace {self.name}: {exc}", cause=exc) from exc
        self.created = True
        # IPv6 autoconfiguration only adds noise (DAD, solicitations) to the
        # measurements; nothing in the testbed uses IPv6.
        for key in ("all", "default"):
            await self.sysctl(f"net.ipv6.conf.{key}.disable_ipv6", "1")

    async def remove(self) -> None:
        """Delete the namespace if this object created it (never somebody else's)."""
        if not self.created:
            self.registry.drop_netns(self.name)
            return
        remove_netns(self.name)
        if netns_exists(self.name):
            raise NetworkError(f"namespace {self.name} could not be removed")
        self.registry.drop_netns(self.name)
        self.created = False

    async def sysctl(self, key: str, value: str) -> None:
        await self.run("sysctl", "-qw", f"{key}={value}")

    async def run(self, *argv: str, timeout: float = 10.0) -> str:
        """Run a command inside the namespace; its stdout, or NetworkError if it fails."""
        done = await run_command(("ip", "netns", "exec", self.name, *argv), timeout=timeout,
                                 error=NetworkError, what=f"{' '.join(argv)} in {self.name}")
        return done.out

    async def bridge(self, *argv: str, timeout: float = 10.0) -> str:
        """``bridge ARGV`` on this namespace's devices, in one exec rather than the two of
        ``run`` (the switchover's redirect waits for it)."""
        done = await run_command(("bridge", "-netns", self.name, *argv), timeout=timeout,
                                 error=NetworkError,
                                 what=f"bridge {' '.join(argv)} in {self.name}")
        return done.out


async def tx_bytes(ns: Namespace, ifname: str) -> int:
    """Bytes ``ifname`` in ``ns`` has sent so far (the kernel's counter)."""
    return int(await ns.run("cat", f"/sys/class/net/{ifname}/statistics/tx_bytes"))


async def create_namespaces(namespaces: Iterable[Namespace]) -> None:
    """Create each namespace in turn (registered before it exists)."""
    for ns in namespaces:
        await ns.create()


async def remove_namespaces(namespaces: Sequence[Namespace]) -> list[str]:
    """Remove the namespaces in reverse order; every one is tried, failures returned."""
    errors = []
    for ns in reversed(namespaces):
        try:
            await ns.remove()
        except NetworkError as exc:
            errors.append(str(exc))
    return errors


async def add_veth(left: Namespace, left_if: str, right: Namespace, right_if: str) -> None:
    """A veth pair with one end in each namespace."""
    async with AsyncIPRoute(netns=left.name) as ipr:
        await ipr.link("add", ifname=left_if, kind="veth",
                       peer={"ifname": right_if, "net_ns_fd": right.name})


async def link_up(ipr: AsyncIPRoute, ifname: str, **extra: Any) -> int:
    """Set an interface up (with extra attributes such as mtu, master); its index."""
    found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetworkError(f"interface {ifname} missing")
    await ipr.link("set", index=found[0], state="up", **extra)
    return int(found[0])


@contextlib.asynccontextmanager
async def owned_namespaces(namespaces: Sequence[Namespace]) -> AsyncIterator[None]:
    """Create ``namespaces`` for the block; remove every one when it ends, however it ends.

    A failure to remove is raised as ``NetworkError`` after a clean block, and
    only logged when the block itself raised (its error is the one to see).
    """
    clean = False
    try:
        await create_namespaces(namespaces)
        yield
        clean = True
    finally:
        errors = await remove_namespaces(namespaces)
        if errors and clean:
            raise NetworkError("; ".join(errors))
        for error in errors:
            log.warning("%s", error)


async def join_through(left: Namespace, left_if: str, middle: Namespace,
                       middle_ifs: tuple[str, str], right: Namespace, right_if: str, *,
                       mtu: int) -> None:
    """Two veth pairs meeting in ``middle``: ``left_if`` to ``middle_ifs[0]``, ``middle_ifs[1]``
    to ``right_if``.  The middle ends are up without addresses: a ``WanLink`` joins them."""
    try:
        await add_veth(left, left_if, middle, middle_ifs[0])
        await add_veth(middle, middle_ifs[1], right, right_if)
        async with AsyncIPRoute(netns=middle.name) as ipr:
            await link_up(ipr, "lo")
            for ifname in middle_ifs:
                await link_up(ipr, ifname, mtu=mtu)
    except NetlinkError as exc:
        raise NetworkError(f"cannot join {left.name} and {right.name} through {middle.name}: {exc}",
                           cause=exc) from exc


async def configure_host(ns: Namespace, ifname: str, address: str, prefixlen: int, *,
                         mtu: int = 1500) -> int:
    """``lo`` and ``ifname`` up in ``ns``, ``address/prefixlen`` on ``ifname``; its index."""
    try:
        async with AsyncIPRoute(netns=ns.name) as ipr:
            await link_up(ipr, "lo")
            index = await link_up(ipr, ifname, mtu=mtu)
            await ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
    except NetlinkError as exc:
        raise NetworkError(f"cannot address {ifname} in {ns.name}: {exc}", cause=exc) from exc
    return index
