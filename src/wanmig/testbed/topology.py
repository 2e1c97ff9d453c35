"""The two-site topology, built with pyroute2.

::

      client ns (<id>-c)                site A ns (<id>-a)                    site B ns (<id>-b)
    ┌───────────────┐          ┌──────────────────────────┐          ┌──────────────────────────┐
    │ eth0 10.77.0.100├─veth───┤cl0 ─┐                    │          │                          │
    └───────────────┘          │     br0 ── tap0 (VM)     │          │    br0 ── tap0 (VM)      │
                               │      └─ vx0 (VXLAN 77)   │          │     └─ vx0 (VXLAN 77)    │
                               │  isl0 172.30.0.1/30 ─────┼──veth────┼─ isl0 172.30.0.2/30      │
                               └──────────────────────────┘          └──────────────────────────┘

Each site has a bridge holding the VM's tap.  The sites are joined by an
inter-site link (a veth pair here; the WAN emulator of ``wan/`` sits on it
later) carrying both the migration stream and a VXLAN tunnel that stretches
the VM's subnet across the sites, so the VM keeps its address and MAC when it
moves (Travostino's L2 extension).  The underlay MTU is 1600 so that full
1500-byte guest frames fit in VXLAN.  The client sits on site A's segment:
after the move its traffic crosses the inter-site link to reach the VM.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import NetworkError
from ..registry import Registry
from .netns import Namespace

log = logging.getLogger("wanmig.testbed")

UNDERLAY_MTU = 1600
VXLAN_ID = 77
VXLAN_PORT = 4789


@dataclass(frozen=True)
class Addressing:
    """Addresses and names of the testbed; the defaults are what the demo uses."""

    vm_ip: str = "10.77.0.10"
    client_ip: str = "10.77.0.100"
    vm_prefixlen: int = 24
    site_a_ip: str = "172.30.0.1"
    site_b_ip: str = "172.30.0.2"
    inter_site_prefixlen: int = 30
    vm_mac: str = "52:54:00:77:00:10"
    tap: str = "tap0"
    migration_port: int = 4444

    @property
    def vm_cidr(self) -> str:
        return f"{self.vm_ip}/{self.vm_prefixlen}"


class TestbedState(enum.Enum):
    CREATED = "created"
    UP = "up"
    DOWN = "down"


class Testbed:
    """Site A, site B and the client; ``async with`` builds and removes them."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, registry: Registry, addressing: Addressing | None = None) -> None:
        self.registry = registry
        self.addr = addressing or Addressing()
        rid = registry.run_id
        self.site_a = Namespace(f"wm{rid}-a", registry)
        self.site_b = Namespace(f"wm{rid}-b", registry)
        self.client = Namespace(f"wm{rid}-c", registry)
        self.state = TestbedState.CREATED

    def __repr__(self) -> str:
        return (f"Testbed(state={self.state.value}, a={self.site_a.name}, "
                f"b={self.site_b.name}, client={self.client.name})")

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        return (self.site_a, self.site_b, self.client)

    def site(self, which: str) -> Namespace:
        return {"a": self.site_a, "b": self.site_b}[which]

    def site_ip(self, which: str) -> str:
        return {"a": self.addr.site_a_ip, "b": self.addr.site_b_ip}[which]

    async def up(self) -> None:
        """Create everything; on any failure remove what was made and raise."""
        try:
            for ns in self.namespaces:
                await ns.create()
            await self._build()
        except BaseException:
            await self.down()
            raise
        self.state = TestbedState.UP
        log.info("testbed up: %r", self)

    async def down(self) -> None:
        errors = []
        for ns in reversed(self.namespaces):
            try:
                await ns.remove()
            except NetworkError as exc:
                errors.append(str(exc))
        self.state = TestbedState.DOWN
        if errors:
            raise NetworkError("; ".join(errors))

    async def __aenter__(self) -> "Testbed":
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

    async def _build(self) -> None:
        a = self.addr
        try:
            async with AsyncIPRoute(netns=self.site_a.name) as ipr:
                await ipr.link("add", ifname="isl0", kind="veth",
                               peer={"ifname": "isl0", "net_ns_fd": self.site_b.name})
                await ipr.link("add", ifname="cl0", kind="veth",
                               peer={"ifname": "eth0", "net_ns_fd": self.client.name})
            for which in ("a", "b"):
                async with AsyncIPRoute(netns=self.site(which).name) as ipr:
                    await self._build_site(ipr, which)
            async with AsyncIPRoute(netns=self.client.name) as ipr:
                await _up(ipr, "lo")
                idx = await _up(ipr, "eth0", mtu=1500)
                await ipr.addr("add", index=idx, address=a.client_ip, prefixlen=a.vm_prefixlen)
        except NetlinkError as exc:
            raise NetworkError(f"testbed set-up failed: {exc}", cause=exc) from exc

    async def _build_site(self, ipr: AsyncIPRoute, which: str) -> None:
        a = self.addr
        local, remote = self.site_ip(which), self.site_ip("b" if which == "a" else "a")
        await _up(ipr, "lo")
        isl = await _up(ipr, "isl0", mtu=UNDERLAY_MTU)
        await ipr.addr("add", index=isl, address=local, prefixlen=a.inter_site_prefixlen)
        await ipr.link("add", ifname="br0", kind="bridge")
        br = await _up(ipr, "br0", mtu=1500)
        await ipr.link("add", ifname="vx0", kind="vxlan", vxlan_id=VXLAN_ID,
                       vxlan_local=local, vxlan_group=remote, vxlan_port=VXLAN_PORT)
        await ipr.link("add", ifname=a.tap, kind="tuntap", mode="tap", no_pi=True)
        ports = ["vx0", a.tap] + (["cl0"] if which == "a" else [])
        for port in ports:
            await _up(ipr, port, mtu=1500, master=br)


async def _up(ipr: AsyncIPRoute, ifname: str, **extra: Any) -> int:
    """Set an interface up (with extra attributes); returns its index."""
    found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetworkError(f"interface {ifname} missing")
    await ipr.link("set", index=found[0], state="up", **extra)
    return int(found[0])
