"""``route``: the VM keeps its address in B's foreign subnet; its /32 moves by BGP.

Silvera et al. (SYSTOR 2009) let a VM keep its address where the subnet is
not its own; operators move such host routes today with EVPN type-5 or LISP.
Here each router runs BIRD (``network/bird.py``) and the three sites speak
eBGP.  While the VM is at A its address is reached by A's subnet route (the
testbed's static one); at the switchover B's BIRD announces the VM's /32
from B's LAN, the client's site and A learn it, and the longer prefix wins:
the client reaches the VM at B directly, A forwards to B what still comes to it.

The guest changes nothing: B's router answers for its gateway at A
(``gateway.answer_for_old_gateway``).

* ``prepare``: B's router takes the gateway's MAC and proxies its address;
  the three BIRDs start and their six sessions must be up within
  ``SESSION_TIMEOUT_S`` (else the run stops here, the VM untouched);
* ``switchover`` (the guest is stopped at A): B's router gets a permanent
  neighbour entry for the VM (what reaches it waits in B's tap for the guest,
  no ARP), and B's BIRD enables the host route (kernel, then BGP);
* ``redirect`` (B runs): ``announce-self``, then until the client site's
  BIRD has the /32 via B (``route_switch_ms``, from the announcement);
* ``rollback``: the host route withdrawn, so the /24 leads to A again;
* ``close``: the daemons stopped (their routes go with them).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, ClassVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..context import Part, RunContext
from ..errors import NetworkError
from ..testbed.topology import Addressing
from .bird import HOST_ROUTE_PROTOCOL, Bird, BirdConfig, Peer, wait_established
from .gateway import NUD_PERMANENT, answer_for_old_gateway
from .l2extend import announce

SESSION_TIMEOUT_S = 15.0
CONVERGE_TIMEOUT_S = 10.0
#: Each site's AS number.
ASN = {"a": 65001, "b": 65002, "c": 65003}


def bird_configs(addr: Addressing, password: str | None = None) -> dict[str, BirdConfig]:
    """Each router's BIRD: eBGP to the two other sites over its WAN links, every session
    signed with ``password`` (TCP-MD5); B may announce the VM's /32 (from its LAN), the
    client's site installs routes with its address."""
    def peers(site: str) -> tuple[Peer, ...]:
        return tuple(Peer(f"to_{other}", addr.link_ip(site, other), addr.link_ip(other, site),
                          ASN[other]) for other in "abc" if other != site)

    home = addr.lan("a")
    return {
        "a": BirdConfig(addr.link_ip("a", "b"), ASN["a"], peers("a"), host_prefix=home,
                        password=password),
        "b": BirdConfig(addr.link_ip("b", "a"), ASN["b"], peers("b"),
                        host_routes=(f"{addr.vm_ip}/32",), host_prefix=home,
                        password=password),
        "c": BirdConfig(addr.link_ip("c", "a"), ASN["c"], peers("c"), prefsrc=addr.client_ip,
                        host_prefix=home, password=password),
    }


class Route(Part):
    kind: ClassVar[str] = "network"
    name: ClassVar[str] = "route"

    def __init__(self) -> None:
        self.birds: dict[str, Bird] = {}
        self.sessions_up_ms: float | None = None
        self.announced_at: float | None = None
        self.route_switch_ms: float | None = None
        self.client_route: str | None = None
        self.announced = False
        self._ipr_b: AsyncIPRoute | None = None   # B's router, opened at prepare
        self._lan_b = 0

    def __repr__(self) -> str:
        return f"Route(announced at B: {self.announced}, daemons: {list(self.birds)})"

    async def prepare(self, ctx: RunContext) -> None:
        tb = ctx.testbed
        await answer_for_old_gateway(tb)
        self._ipr_b = AsyncIPRoute(netns=tb.router_b.name)
        self._lan_b = (await self._ipr_b.link_lookup(ifname="lan0"))[0]
        configs = bird_configs(tb.addr, secrets.token_hex(16))
        where = {"a": tb.router_a, "b": tb.router_b, "c": tb.client}
        for site, cfg in configs.items():
            bird = Bird(f"r{site}", where[site].name, cfg, ctx.run_dir, ctx.registry)
            self.birds[site] = bird
            await bird.start()
        ctx.ui.step("route: BIRD on the three routers, waiting for the BGP sessions")
        self.sessions_up_ms = round(1000 * await wait_established(
            list(self.birds.values()), SESSION_TIMEOUT_S), 1)

    async def switchover(self, ctx: RunContext) -> None:
        """Both at once, on what ``prepare`` opened: the neighbour entry and the
        announcement."""
        assert self._ipr_b is not None
        addr = ctx.testbed.addr
        self.announced = True   # from here a rollback withdraws it, whatever came of it
        neighbour = self._ipr_b.neigh("replace", dst=addr.vm_ip, lladdr=addr.vm_mac,
                                      ifindex=self._lan_b, state=NUD_PERMANENT)
        try:
            await asyncio.gather(neighbour,
                                 self.birds["b"].request(f"enable {HOST_ROUTE_PROTOCOL}"))
        except NetlinkError as exc:
            raise NetworkError(f"route: cannot reach the VM from B's router: {exc}",
                               cause=exc) from exc
        self.announced_at = time.monotonic()

    async def redirect(self, ctx: RunContext) -> None:
        assert self.announced_at is not None
        await announce(ctx)
        net, via = f"{ctx.testbed.addr.vm_ip}/32", ctx.testbed.addr.link_ip("b", "c")
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while via not in await self.birds["c"].gateways(net):
            if time.monotonic() > deadline:
                raise NetworkError(f"route: the client's site has no route to {net} via B "
                                   f"{CONVERGE_TIMEOUT_S:g} s after B announced it")
            await asyncio.sleep(0.005)
        self.route_switch_ms = round((time.monotonic() - self.announced_at) * 1000, 1)
        # what the client's kernel does with the VM's address now (BIRD installed it)
        self.client_route = (await ctx.testbed.client.run(
            "ip", "route", "get", ctx.testbed.addr.vm_ip)).splitlines()[0].strip()

    async def rollback(self, ctx: RunContext) -> None:
        if self.announced:
            await self.birds["b"].request(f"disable {HOST_ROUTE_PROTOCOL}")
            self.announced = False

    async def close(self) -> None:
        if self._ipr_b is not None:
            self._ipr_b.close()
            self._ipr_b = None
        errors = []
        for bird in self.birds.values():
            try:
                await bird.stop()
            except NetworkError as exc:
                errors.append(str(exc))
        self.birds.clear()
        if errors:
            raise NetworkError("; ".join(errors))

    def record(self) -> dict[str, Any]:
        return {"mode": self.name, "route_switch_ms": self.route_switch_ms,
                "bgp_sessions_up_ms": self.sessions_up_ms, "client_route": self.client_route}

    def instants(self) -> dict[str, float]:
        return {} if self.announced_at is None else {"route_announced": self.announced_at}
