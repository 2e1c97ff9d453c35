"""The three-site topology, built with pyroute2.

::

                                  client site C  (<id>-c)
                                  10.3.0.100 (lo)
                            ra0 172.30.1.2      rb0 172.30.2.2
                               │ [ca]                  │ [cb]
        site A                 │                       │                 site B
  ┌─ router (<id>-ra) ─────────┴──┐             ┌──────┴───────── router (<id>-rb) ─┐
  │ cl0 172.30.1.1                │             │                  cl0 172.30.2.1   │
  │ wan0 172.30.0.1 ──────────────┼────[w]──────┼─────────────── wan0 172.30.0.2    │
  │ lan0 10.1.0.1/24  hv0 172.16.1.1            lan0 10.2.0.1/24  hv0 172.16.2.1    │
  └───┬───────────────┬───────────┘             └───┬────────────────┬──────────────┘
      │               │                             │                │
  ┌─ hypervisor (<id>-a) ─────────┐             ┌─ hypervisor (<id>-b) ─────────┐
  │ rt0 ─ br0 ─ tap0 (VM)          │             │ rt0 ─ br0 ─ tap0 (VM)         │
  │ up0 172.16.1.2 (default: ra)   │             │ up0 172.16.2.2 (default: rb)  │
  └────────────────────────────────┘             └───────────────────────────────┘

Three sites, each an IP subnet of its own behind its router: the VM's home
subnet 10.1.0.0/24 at A (router A is its gateway, 10.1.0.1), 10.2.0.0/24 at B,
the client at C.  Every path crosses an emulated WAN link: [w] between the
sites' routers carries what the hypervisors send each other (the migration, the
disk, a mode's tunnel), and the client's site has a link of its own to each
site ([ca], [cb]), so that after a move the client reaches B directly, or
through A where a mode tunnels (path stretch shows in the RTT).  The routers'
routes are static: each knows the other sites' subnets by their links.  A
network mode adds what it needs on top (``network/``): ``l2-extend`` stretches
A's subnet to B's bridge with VXLAN between the hypervisors (``stretch``).

A hypervisor holds the VM's tap on its bridge, which a veth (``rt0`` to the
router's ``lan0``) joins to the site's LAN; its own traffic to the other site
leaves by ``up0``.  The underlay (``up0``, ``hv0``, ``wan0`` and the link) has
MTU 1600 so that full 1500-byte guest frames fit in VXLAN.

[w], [ca] and [cb] are plain veth pairs, or, with a WAN profile (``wan`` for
[w], ``client_wan`` for both client links), two veth pairs meeting in a middle
namespace (<id>-w: ``wa``/``wb``, ``ca``/``ac``, ``cb``/``bc``) where a
``WanLink`` delays, drops and shapes the frames.
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
#: A hypervisor's uplink to its router, whose counter gives the bytes on the WAN: all A
#: sends to B (the migration, the disk, the stretched subnet's frames) crosses the WAN.
WAN_IFACE = "up0"
VXLAN_ID = 77
VXLAN_PORT = 4789
SITES = ("a", "b")
#: Each site's number in its addresses (10.N.0.0/24, 172.16.N.0/24); the client's is 3.
SITE_NUMBER = {"a": 1, "b": 2, "c": 3}
#: Each WAN link's /30, and the sites holding its .1 and its .2.
LINKS = {frozenset("ab"): ("172.30.0", "a", "b"), frozenset("ac"): ("172.30.1", "a", "c"),
         frozenset("bc"): ("172.30.2", "b", "c")}


@dataclass(frozen=True)
class Addressing:
    """Addresses and names of the testbed; the defaults are what the demo uses."""

    vm_ip: str = "10.1.0.10"          # in A's subnet: the VM's home address
    client_ip: str = "10.3.0.100"
    vm_prefixlen: int = 24
    vm_mac: str = "52:54:00:77:00:10"
    tap: str = "tap0"
    migration_port: int = 4444
    nbd_port: int = 10809      # the destination's NBD server (storage strategies)
    wancopy_port: int = 10810  # the destination's wancopy receiver (storage.transport)

    @property
    def vm_cidr(self) -> str:
        return f"{self.vm_ip}/{self.vm_prefixlen}"

    @staticmethod
    def lan(site: str) -> str:
        """A site's LAN (``10.N.0.0/24``): the VM's home subnet at A."""
        return f"10.{SITE_NUMBER[site]}.0.0/24"

    @staticmethod
    def gateway(site: str) -> str:
        """The site router's address on its LAN: the VM's gateway at its home site."""
        return f"10.{SITE_NUMBER[site]}.0.1"

    @staticmethod
    def vm_ip_at(site: str) -> str:
        """The VM's address in a site's own subnet (``dns-tunnel`` gives it B's at B)."""
        return f"10.{SITE_NUMBER[site]}.0.10"

    @staticmethod
    def dns_ip() -> str:
        """The VM's zone's authoritative server (``dns-tunnel``), at router A."""
        return "10.1.0.53"

    @staticmethod
    def hypervisor_ip(site: str) -> str:
        """The hypervisor's own address: the migration's, the disk's and the tunnels' end."""
        return f"172.16.{SITE_NUMBER[site]}.2"

    @staticmethod
    def link_ip(site: str, toward: str) -> str:
        """``site``'s address on its WAN link to ``toward``."""
        net, first, _ = LINKS[frozenset((site, toward))]
        return f"{net}.{1 if site == first else 2}"

    @property
    def site_a_ip(self) -> str:
        return self.hypervisor_ip("a")

    @property
    def site_b_ip(self) -> str:
        return self.hypervisor_ip("b")


class TestbedState(enum.Enum):
    CREATED = "created"
    UP = "up"
    DOWN = "down"


class Testbed:
    """Sites A and B (a router and a hypervisor each) and the client's site; ``async
    with`` builds and removes them."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, registry: Registry, addressing: Addressing | None = None, *,
                 wan: LinkProfile | None = None, client_wan: LinkProfile | None = None,
                 wan_backend: str = "auto") -> None:
        self.registry = registry
        self.addr = addressing or Addressing()
        rid = registry.run_id
        self.site_a = Namespace(f"wm{rid}-a", registry)
        self.site_b = Namespace(f"wm{rid}-b", registry)
        self.router_a = Namespace(f"wm{rid}-ra", registry)
        self.router_b = Namespace(f"wm{rid}-rb", registry)
        self.client = Namespace(f"wm{rid}-c", registry)
        self.middle = Namespace(f"wm{rid}-w", registry) if (wan or client_wan) else None
        self.wan_profile, self.client_wan_profile = wan, client_wan
        self.wan_backend = wan_backend
        self.wan: WanLink | None = None          # the inter-site link, once up
        #: The client's links, to site A and to site B, once up (with ``client_wan``).
        self.client_wans: dict[str, WanLink] = {}
        self.state = TestbedState.CREATED

    def __repr__(self) -> str:
        return (f"Testbed(state={self.state.value}, a={self.site_a.name}, "
                f"b={self.site_b.name}, client={self.client.name}, wan={self.wan!r})")

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        base = (self.router_a, self.router_b, self.site_a, self.site_b, self.client)
        return base + ((self.middle,) if self.middle else ())

    @property
    def links(self) -> tuple[WanLink, ...]:
        return tuple(x for x in (self.wan, *self.client_wans.values()) if x is not None)

    def site(self, which: str) -> Namespace:
        """A site's hypervisor: where its QEMU, tap and bridge are."""
        return {"a": self.site_a, "b": self.site_b}[which]

    def router(self, which: str) -> Namespace:
        return {"a": self.router_a, "b": self.router_b}[which]

    def site_ip(self, which: str) -> str:
        return self.addr.hypervisor_ip(which)

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
        for link in self.links:
            try:
                await link.stop()
            except NetworkError as exc:
                errors.append(str(exc))
        self.wan, self.client_wans = None, {}
        errors += await remove_namespaces(self.namespaces)
        self.state = TestbedState.DOWN
        if errors:
            raise NetworkError("; ".join(errors))

    async def measure_link(self, *, goodput: bool) -> tuple[float | None, float | None]:
        """The inter-site path as it is now: RTT p50 from A's hypervisor to B's (1 s of
        100 Hz pings) and, if asked, one TCP stream's goodput in Mbit/s (2 s after its
        warm-up)."""
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
            await self._join(self.router_a, "wan0", self.router_b, "wan0", ("wa", "wb"),
                             self.wan_profile is not None, UNDERLAY_MTU)
            client_emulated = self.client_wan_profile is not None
            await self._join(self.client, "ra0", self.router_a, "cl0", ("ca", "ac"),
                             client_emulated, 1500)
            await self._join(self.client, "rb0", self.router_b, "cl0", ("cb", "bc"),
                             client_emulated, 1500)
            for which in SITES:
                await add_veth(self.site(which), WAN_IFACE, self.router(which), "hv0")
                await add_veth(self.site(which), "rt0", self.router(which), "lan0")
                await self._build_router(which)
                await self._build_hypervisor(which)
            await self._build_client()
            if self.middle is not None:
                async with AsyncIPRoute(netns=self.middle.name) as ipr:
                    await link_up(ipr, "lo")
        except NetlinkError as exc:
            raise NetworkError(f"testbed set-up failed: {exc}", cause=exc) from exc
        if self.wan_profile is not None:
            self.wan = await self._start_link("wa", "wb", self.wan_profile)
        if self.client_wan_profile is not None:
            for which, ends in (("a", ("ca", "ac")), ("b", ("cb", "bc"))):
                self.client_wans[which] = await self._start_link(*ends, self.client_wan_profile)
        log.debug("addressing: %s", a)

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

    async def _build_router(self, which: str) -> None:
        a, other = self.addr, "b" if which == "a" else "a"
        ns = self.router(which)
        await _routing_on(ns, ("lan0", "hv0", "wan0", "cl0"))
        async with AsyncIPRoute(netns=ns.name) as ipr:
            await link_up(ipr, "lo")
            await _address(ipr, "lan0", a.gateway(which), 24, 1500)
            await _address(ipr, "hv0", _infra(which, 1), 24, UNDERLAY_MTU)
            await _address(ipr, "wan0", a.link_ip(which, other), 30, UNDERLAY_MTU)
            await _address(ipr, "cl0", a.link_ip(which, "c"), 30, 1500)
            peer = a.link_ip(other, which)
            for net in (a.lan(other), f"172.16.{SITE_NUMBER[other]}.0/24"):
                await ipr.route("add", dst=net, gateway=peer)
            await ipr.route("add", dst=a.lan("c"), gateway=a.link_ip("c", which))

    async def _build_hypervisor(self, which: str) -> None:
        a = self.addr
        async with AsyncIPRoute(netns=self.site(which).name) as ipr:
            await link_up(ipr, "lo")
            await _address(ipr, WAN_IFACE, a.hypervisor_ip(which), 24, UNDERLAY_MTU)
            await ipr.route("add", dst="0.0.0.0/0", gateway=_infra(which, 1))
            await ipr.link("add", ifname="br0", kind="bridge")
            br = await link_up(ipr, "br0", mtu=1500)
            await ipr.link("add", ifname=a.tap, kind="tuntap", mode="tap", no_pi=True)
            for port in ("rt0", a.tap):
                await link_up(ipr, port, mtu=1500, master=br)

    async def _build_client(self) -> None:
        a = self.addr
        await _routing_on(self.client, ("ra0", "rb0"), forward=False)
        async with AsyncIPRoute(netns=self.client.name) as ipr:
            lo = await link_up(ipr, "lo")
            await ipr.addr("add", index=lo, address=a.client_ip, prefixlen=32)
            for which in SITES:
                await _address(ipr, f"r{which}0", a.link_ip("c", which), 30, 1500)
                await ipr.route("add", dst=a.lan(which), gateway=a.link_ip(which, "c"),
                                prefsrc=a.client_ip)


def _infra(site: str, host: int) -> str:
    return f"172.16.{SITE_NUMBER[site]}.{host}"


async def _address(ipr: AsyncIPRoute, ifname: str, address: str, prefixlen: int,
                   mtu: int) -> None:
    index = await link_up(ipr, ifname, mtu=mtu)
    await ipr.addr("add", index=index, address=address, prefixlen=prefixlen)


async def _routing_on(ns: Namespace, ifnames: tuple[str, ...], *, forward: bool = True) -> None:
    """Forwarding on (a router), and no reverse-path filter on any of ``ifnames`` (an
    interface keeps the value the machine's default had when it was made): after a
    move, requests and replies may take different paths (a tunnel one way, a direct
    route back)."""
    keys = [f"net.ipv4.conf.{name}.rp_filter=0" for name in ("all", "default", *ifnames)]
    await ns.run("sysctl", "-qw", *keys, *(["net.ipv4.ip_forward=1"] if forward else []))
