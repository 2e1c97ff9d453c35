"""The two-site topology, built with pyroute2.

::

   client ns (<id>-c)          site A ns (<id>-a)                         site B ns (<id>-b)
  ┌─────────────────┐       ┌───────────────────────┐                 ┌───────────────────────┐
  │ eth0 10.77.0.100 ├─[c]──┤ cl0 ─┐                │                 │                       │
  └─────────────────┘       │      br0 ── tap0 (VM) │                 │  br0 ── tap0 (VM)     │
                            │       └─ vx0 (VXLAN)  │                 │   └─ vx0 (VXLAN)      │
                            │ isl0 172.30.0.1/30 ───┼──────[w]────────┼─ isl0 172.30.0.2/30   │
                            └───────────────────────┘                 └───────────────────────┘

Each site has a bridge holding the VM's tap.  The sites are joined by an
inter-site link [w] carrying both the migration stream and a VXLAN tunnel
that stretches the VM's subnet across the sites, so the VM keeps its address
and MAC when it moves (Travostino's L2 extension).  The underlay MTU is 1600
so that full 1500-byte guest frames fit in VXLAN.  The client sits on site
A's segment; after the move its traffic crosses the inter-site link.

[w] is a plain veth pair, or, with a WAN profile, two veth pairs meeting in a
middle namespace (<id>-w, interfaces ``wa``/``wb``) where a ``WanLink``
delays, drops and shapes the frames.  The client's path [c] can get its own
emulated link the same way (``ca``/``cb`` in the middle namespace).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import NetworkError
from ..registry import Registry
from ..wan import measure
from ..wan.link import WanLink
from ..wan.profiles import LinkProfile
from .netns import Namespace, add_veth, create_namespaces, link_up, remove_namespaces

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
    nbd_port: int = 10809      # the destination's NBD server (storage strategies)
    wancopy_port: int = 10810  # the destination's wancopy receiver (storage.transport)

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

    def __init__(self, registry: Registry, addressing: Addressing | None = None, *,
                 wan: LinkProfile | None = None, client_wan: LinkProfile | None = None,
                 wan_backend: str = "auto") -> None:
        self.registry = registry
        self.addr = addressing or Addressing()
        rid = registry.run_id
        self.site_a = Namespace(f"wm{rid}-a", registry)
        self.site_b = Namespace(f"wm{rid}-b", registry)
        self.client = Namespace(f"wm{rid}-c", registry)
        self.middle = Namespace(f"wm{rid}-w", registry) if (wan or client_wan) else None
        self.wan_profile, self.client_wan_profile = wan, client_wan
        self.wan_backend = wan_backend
        self.wan: WanLink | None = None          # the inter-site link, once up
        self.client_wan: WanLink | None = None   # the client's link, once up
        self.state = TestbedState.CREATED

    def __repr__(self) -> str:
        return (f"Testbed(state={self.state.value}, a={self.site_a.name}, "
                f"b={self.site_b.name}, client={self.client.name}, wan={self.wan!r})")

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        base = (self.site_a, self.site_b, self.client)
        return base + ((self.middle,) if self.middle else ())

    def site(self, which: str) -> Namespace:
        return {"a": self.site_a, "b": self.site_b}[which]

    def site_ip(self, which: str) -> str:
        return {"a": self.addr.site_a_ip, "b": self.addr.site_b_ip}[which]

    async def up(self) -> None:
        """Create everything; on any failure remove what was made and raise."""
        try:
            await create_namespaces(self.namespaces)
            await self._build()
        except BaseException:
            await self.down()
            raise
        self.state = TestbedState.UP
        log.info("testbed up: %r", self)

    async def down(self) -> None:
        errors = []
        for link in (self.client_wan, self.wan):
            if link is not None:
                try:
                    await link.stop()
                except NetworkError as exc:
                    errors.append(str(exc))
        self.wan = self.client_wan = None
        errors += await remove_namespaces(self.namespaces)
        self.state = TestbedState.DOWN
        if errors:
            raise NetworkError("; ".join(errors))

    async def measure_link(self, *, goodput: bool) -> tuple[float | None, float | None]:
        """The inter-site link as it is now: RTT p50 from A to B (1 s of 100 Hz pings)
        and, if asked, one TCP stream's goodput in Mbit/s (2 s after its warm-up)."""
        a, b, ip_b = self.site_a.name, self.site_b.name, self.addr.site_b_ip
        rtt = await measure.rtt(a, b, ip_b, rate_hz=100, seconds=1.0, registry=self.registry)
        if not goodput or rtt.p50_ms is None:
            return rtt.p50_ms, None
        p = self.wan_profile
        g = await measure.goodput(a, b, ip_b, seconds=2.0, rate_mbit=p.rate_mbit if p else None,
                                  rtt_ms=rtt.p50_ms, queue_ms=p.queue_ms if p else 0.0,
                                  registry=self.registry)
        return rtt.p50_ms, g.goodput_mbit

    async def __aenter__(self) -> "Testbed":
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

    async def _build(self) -> None:
        a = self.addr
        try:
            await self._join(self.site_a, "isl0", self.site_b, "isl0", ("wa", "wb"),
                             self.wan_profile is not None, UNDERLAY_MTU)
            await self._join(self.client, "eth0", self.site_a, "cl0", ("ca", "cb"),
                             self.client_wan_profile is not None, 1500)
            for which in ("a", "b"):
                async with AsyncIPRoute(netns=self.site(which).name) as ipr:
                    await self._build_site(ipr, which)
            async with AsyncIPRoute(netns=self.client.name) as ipr:
                await link_up(ipr, "lo")
                idx = await link_up(ipr, "eth0", mtu=1500)
                await ipr.addr("add", index=idx, address=a.client_ip, prefixlen=a.vm_prefixlen)
            if self.middle is not None:
                async with AsyncIPRoute(netns=self.middle.name) as ipr:
                    await link_up(ipr, "lo")
        except NetlinkError as exc:
            raise NetworkError(f"testbed set-up failed: {exc}", cause=exc) from exc
        if self.wan_profile is not None:
            self.wan = await self._start_link("wa", "wb", self.wan_profile)
        if self.client_wan_profile is not None:
            self.client_wan = await self._start_link("ca", "cb", self.client_wan_profile)

    async def _join(self, left: Namespace, left_if: str, right: Namespace, right_if: str,
                    middle_ifs: tuple[str, str], emulated: bool, mtu: int) -> None:
        """A veth pair between two namespaces, or two meeting in the middle one."""
        if not emulated:
            await add_veth(left, left_if, right, right_if)
            return
        assert self.middle is not None
        await add_veth(left, left_if, self.middle, middle_ifs[0])
        await add_veth(self.middle, middle_ifs[1], right, right_if)
        async with AsyncIPRoute(netns=self.middle.name) as ipr:
            for ifname in middle_ifs:
                await link_up(ipr, ifname, mtu=mtu)

    async def _start_link(self, left: str, right: str, profile: LinkProfile) -> WanLink:
        assert self.middle is not None
        link = WanLink(self.middle.name, left, right, profile, registry=self.registry,
                       backend=self.wan_backend)
        await link.start()
        return link

    async def _build_site(self, ipr: AsyncIPRoute, which: str) -> None:
        a = self.addr
        local, remote = self.site_ip(which), self.site_ip("b" if which == "a" else "a")
        await link_up(ipr, "lo")
        isl = await link_up(ipr, "isl0", mtu=UNDERLAY_MTU)
        await ipr.addr("add", index=isl, address=local, prefixlen=a.inter_site_prefixlen)
        await ipr.link("add", ifname="br0", kind="bridge")
        br = await link_up(ipr, "br0", mtu=1500)
        await ipr.link("add", ifname="vx0", kind="vxlan", vxlan_id=VXLAN_ID,
                       vxlan_local=local, vxlan_group=remote, vxlan_port=VXLAN_PORT)
        await ipr.link("add", ifname=a.tap, kind="tuntap", mode="tap", no_pi=True)
        ports = ["vx0", a.tap] + (["cl0"] if which == "a" else [])
        for port in ports:
            await link_up(ipr, port, mtu=1500, master=br)
