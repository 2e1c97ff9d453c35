"""``mobile-ip``: the VM keeps its home address; A's router is its home agent.

HyperMIP (Li et al. 2008) handles the VM's mobility in the hypervisors: the
home agent at the VM's home site keeps receiving its traffic, answers ARP for
it (proxy ARP) and tunnels what arrives to the hypervisor where the VM now
runs (the care-of address), where the frames reach the VM as if it had never
moved.  The VM's replies leave B directly (triangular routing): B's router
answers for the VM's old gateway (``gateway.answer_for_old_gateway``), so the
guest needs no change.

The tunnel (``mip0``) runs from router A's WAN address to B's hypervisor, whose
end is a port of B's bridge: what router A sends into it arrives at B's tap.
This kernel has no IPIP, GRE or ESP, so it is a layer-2 tunnel
(``network.tunnel``): OpenVPN with mutual TLS, or VXLAN VNI 78 with ``[network]
encrypt = false``.  A production home agent would use IPIP or GRE (RFC
2003/2784) inside IPsec to B's hypervisor.

* ``prepare``: B's router answers for the gateway; the tunnel's two ends are
  made (idle);
* ``switchover`` (the guest is stopped at A): router A routes the VM's /32
  into the tunnel with a permanent neighbour entry for it there (no ARP across
  the WAN) and starts answering ARP for it on A's LAN, all on a netlink socket
  opened at ``prepare``: what comes to A from then on waits in B's tap;
* ``redirect``: ``announce-self`` from B (B's bridge learns the VM's port);
* ``rollback``: the /32 and the proxy entry removed: A delivers on its LAN again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..context import Part, RunContext
from ..errors import NetworkError
from .gateway import NTF_PROXY, NUD_PERMANENT, answer_for_old_gateway
from .l2extend import announce
from .tunnel import Tunnel, TunnelEnd, start_tunnel

TUNNEL = "mip0"
TUNNEL_VNI = 78


class MobileIp(Part):
    kind: ClassVar[str] = "network"
    name: ClassVar[str] = "mobile-ip"

    def __init__(self) -> None:
        self._ipr_a: AsyncIPRoute | None = None   # router A, opened at prepare
        self._index: dict[str, int] = {}
        self.tunnelled = False
        self.tunnel_at: float | None = None
        self.tunnel: Tunnel | None = None

    def __repr__(self) -> str:
        return f"MobileIp(tunnelling to B: {self.tunnelled})"

    async def prepare(self, ctx: RunContext) -> None:
        tb = ctx.testbed
        await answer_for_old_gateway(tb)
        home, care_of = tb.addr.link_ip("a", "b"), tb.addr.site_b_ip
        self.tunnel = await start_tunnel(ctx, Tunnel(
            "mip", TUNNEL, TunnelEnd(tb.router_a.name, home),
            TunnelEnd(tb.site_b.name, care_of, "br0"), encrypt=ctx.scenario.network.encrypt,
            vni=TUNNEL_VNI, registry=ctx.registry))
        try:
            # what B floods into the tunnel (the guest asking for its gateway) must not be
            # answered from A: B's router is the gateway there
            await tb.router_a.sysctl(f"net.ipv4.conf.{TUNNEL}.arp_ignore", "8")
            self._ipr_a = AsyncIPRoute(netns=tb.router_a.name)
            for name in (TUNNEL, "lan0"):
                self._index[name] = (await self._ipr_a.link_lookup(ifname=name))[0]
        except (NetlinkError, IndexError) as exc:
            raise NetworkError(f"mobile-ip: cannot build the tunnel from A to B: {exc}",
                               cause=exc) from exc

    async def switchover(self, ctx: RunContext) -> None:
        assert self._ipr_a is not None
        ipr, addr = self._ipr_a, ctx.testbed.addr
        self.tunnelled = True   # from here a rollback undoes it, whatever came of it
        try:
            await asyncio.gather(
                ipr.route("replace", dst=f"{addr.vm_ip}/32", oif=self._index[TUNNEL]),
                ipr.neigh("replace", dst=addr.vm_ip, lladdr=addr.vm_mac,
                          ifindex=self._index[TUNNEL], state=NUD_PERMANENT),
                ipr.neigh("replace", dst=addr.vm_ip, ifindex=self._index["lan0"],
                          flags=NTF_PROXY))
        except NetlinkError as exc:
            raise NetworkError(f"mobile-ip: the home agent cannot take the VM's traffic: "
                               f"{exc}", cause=exc) from exc
        self.tunnel_at = time.monotonic()

    async def redirect(self, ctx: RunContext) -> None:
        await announce(ctx)

    async def rollback(self, ctx: RunContext) -> None:
        if not self.tunnelled or self._ipr_a is None:
            return
        addr, ipr = ctx.testbed.addr, self._ipr_a
        for step in (ipr.route("del", dst=f"{addr.vm_ip}/32"),
                     ipr.neigh("del", dst=addr.vm_ip, ifindex=self._index["lan0"],
                               flags=NTF_PROXY)):
            try:
                await step
            except NetlinkError:
                pass    # not made: the switchover failed before it
        self.tunnelled = False

    async def close(self) -> None:
        if self._ipr_a is not None:
            self._ipr_a.close()
            self._ipr_a = None
        if self.tunnel is not None:
            await self.tunnel.stop()   # kept: the record names it

    def record(self) -> dict[str, Any]:
        return {"mode": self.name, **(self.tunnel.record() if self.tunnel else {}),
                "tunnelled": self.tunnelled}

    def instants(self) -> dict[str, float]:
        return {} if self.tunnel_at is None else {"tunnel_on": self.tunnel_at}

