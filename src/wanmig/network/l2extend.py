"""``l2-extend``: the VM's subnet is stretched from A to B, so it keeps its address.

At ``prepare`` the testbed's hypervisors join their bridges with a layer-2
tunnel (Travostino et al. 2006; ``network.tunnel``: OpenVPN with mutual TLS, or
VXLAN with ``[network] encrypt = false``), port ``l2x0`` on each bridge: A's
subnet, and router A as the VM's gateway, reach B's bridge.  The client's path
after the move is the stretched one: client -> router A -> the tunnel over the
WAN -> B (path stretch).
What moves at the switchover is only where the bridges send the VM's frames:

* ``switchover`` (QEMU has stopped the guest at A and sends the last bytes):
  point both bridges at B's tap, so the client's requests wait in B's tap
  queue while the destination loads and are answered the moment it runs,
  instead of dying at A's stopped tap until an announcement crosses the WAN.
  Frames that reach A's tap between the guest's stop and this move are lost
  with A's QEMU; the move is one netlink request per bridge on sockets opened
  at ``prepare``, and the record says how long after the stop it happened
  (``frames_moved``);
* ``redirect`` (the destination runs): ``announce-self`` from B, so every
  switch on the stretched segment learns where the MAC went;
* ``rollback``: point the bridges back at A.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..context import Part, RunContext
from ..errors import NetworkError
from ..registry import Registry
from ..testbed import Testbed
from ..testbed.topology import VXLAN_ID
from .tunnel import Tunnel, TunnelEnd, start_tunnel

#: The tunnel's port on each hypervisor's bridge.
PORT = "l2x0"
#: QEMU's announce-self timing: 5 gratuitous RARPs, 50 ms then 100 ms apart.
ANNOUNCE = {"initial": 50, "max": 550, "rounds": 5, "step": 100}
#: ``bridge fdb replace MAC dev PORT master dynamic``: the bridge's own table (NTF_MASTER),
#: an ordinary learned entry (NUD_REACHABLE; "permanent" would make the bridge keep the
#: VM's frames for itself).
_NTF_MASTER, _NUD_REACHABLE = 0x04, 0x02


def stretch_tunnel(tb: Testbed, registry: Registry, *, encrypt: bool) -> Tunnel:
    """The tunnel that stretches A's subnet: port ``PORT`` on each hypervisor's bridge
    (not started)."""
    return Tunnel("l2x", PORT, TunnelEnd(tb.site_a.name, tb.site_ip("a"), "br0"),
                  TunnelEnd(tb.site_b.name, tb.site_ip("b"), "br0"), encrypt=encrypt,
                  vni=VXLAN_ID, registry=registry)


async def announce(ctx: RunContext) -> None:
    """``announce-self`` from B, which runs: every bridge on the way learns the VM's port."""
    assert ctx.dst is not None
    await ctx.dst.execute("announce-self", dict(ANNOUNCE))


class L2Extend(Part):
    kind: ClassVar[str] = "network"
    name: ClassVar[str] = "l2-extend"

    def __init__(self) -> None:
        self.mac_at = "a"   # where the bridges send the VM's frames
        self._ipr: dict[str, AsyncIPRoute] = {}
        self._port: dict[tuple[str, str], int] = {}   # (site, ifname) -> index
        self.moved_at: float | None = None
        self.tunnel: Tunnel | None = None

    def __repr__(self) -> str:
        return f"L2Extend(frames to site {self.mac_at})"

    async def prepare(self, ctx: RunContext) -> None:
        tb = ctx.testbed
        if self.tunnel is None:
            self.tunnel = await start_tunnel(ctx, stretch_tunnel(
                tb, ctx.registry, encrypt=ctx.scenario.network.encrypt))
        try:
            for site in ("a", "b"):
                ipr = AsyncIPRoute(netns=tb.site(site).name)
                self._ipr[site] = ipr
                for ifname in (tb.addr.tap, PORT):
                    self._port[site, ifname] = (await ipr.link_lookup(ifname=ifname))[0]
        except (NetlinkError, OSError, IndexError) as exc:
            await self.close()
            raise NetworkError(f"l2-extend: cannot reach the bridges: {exc}") from exc

    async def close(self) -> None:
        for ipr in self._ipr.values():
            ipr.close()
        self._ipr.clear()
        if self.tunnel is not None:
            await self.tunnel.stop()   # kept: the record names it

    async def move_frames(self, ctx: RunContext, to_site: str) -> None:
        """Point both bridges at the VM's port in ``to_site`` at once.

        Without this, site A's bridge keeps sending the VM's frames to the old
        tap until a frame from the VM crosses the WAN (its announcement), and
        site B's keeps sending them back into the tunnel.
        """
        tb = ctx.testbed
        if not self._ipr:
            await self.prepare(ctx)
        other = "b" if to_site == "a" else "a"
        self.mac_at = to_site
        try:
            await asyncio.gather(self._point(to_site, tb.addr.tap, tb.addr.vm_mac),
                                 self._point(other, PORT, tb.addr.vm_mac))
        except NetlinkError as exc:
            raise NetworkError(f"l2-extend: cannot move the VM's frames to {to_site}: "
                               f"{exc}") from exc

    async def _point(self, site: str, port: str, mac: str) -> None:
        await self._ipr[site].fdb("replace", ifindex=self._port[site, port], lladdr=mac,
                                  flags=_NTF_MASTER, state=_NUD_REACHABLE)

    async def switchover(self, ctx: RunContext) -> None:
        await self.move_frames(ctx, "b")
        self.moved_at = time.monotonic()

    async def redirect(self, ctx: RunContext) -> None:
        await announce(ctx)

    async def rollback(self, ctx: RunContext) -> None:
        if self.mac_at != "a":
            await self.move_frames(ctx, "a")

    def record(self) -> dict[str, Any]:
        return {"mode": self.name, "frames_sent_to": self.mac_at,
                **(self.tunnel.record() if self.tunnel else {})}

    def instants(self) -> dict[str, float]:
        return {} if self.moved_at is None else {"frames_moved": self.moved_at}
