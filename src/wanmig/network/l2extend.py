"""``l2-extend``: the VM's subnet is stretched between the sites, so it keeps its address.

The testbed joins the two sites' bridges with VXLAN over the inter-site link
(Travostino et al. 2006).  What moves at the switchover is only where the
bridges send the VM's frames:

* ``switchover`` (while QEMU sends the last bytes, the guest stopped at A):
  point both bridges at B's tap, so the client's requests wait in B's tap
  queue while the destination loads and are answered the moment it runs,
  instead of dying at A's stopped tap until an announcement crosses the WAN;
* ``redirect`` (the destination runs): ``announce-self`` from B, so every
  switch on the stretched segment learns where the MAC went;
* ``rollback``: point the bridges back at A.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from ..context import Part, RunContext

#: QEMU's announce-self timing: 5 gratuitous RARPs, 50 ms then 100 ms apart.
ANNOUNCE = {"initial": 50, "max": 550, "rounds": 5, "step": 100}


class L2Extend(Part):
    kind: ClassVar[str] = "network"
    name: ClassVar[str] = "l2-extend"

    def __init__(self) -> None:
        self.mac_at = "a"   # where the bridges send the VM's frames

    def __repr__(self) -> str:
        return f"L2Extend(frames to site {self.mac_at})"

    async def move_frames(self, ctx: RunContext, to_site: str) -> None:
        """Point both bridges at the VM's port in ``to_site`` at once.

        Without this, site A's bridge keeps sending the VM's frames to the old
        tap until a frame from the VM crosses the WAN (its announcement), and
        site B's keeps sending them back into the tunnel.  "dynamic": an
        ordinary learned entry ("permanent" would make the bridge keep the
        VM's frames for itself).
        """
        tb = ctx.testbed
        other = "b" if to_site == "a" else "a"
        self.mac_at = to_site
        mac = tb.addr.vm_mac
        await asyncio.gather(
            tb.site(to_site).bridge("fdb", "replace", mac, "dev", tb.addr.tap, "master",
                                    "dynamic"),
            tb.site(other).bridge("fdb", "replace", mac, "dev", "vx0", "master", "dynamic"))

    async def switchover(self, ctx: RunContext) -> None:
        await self.move_frames(ctx, "b")

    async def redirect(self, ctx: RunContext) -> None:
        assert ctx.dst is not None
        await ctx.dst.execute("announce-self", dict(ANNOUNCE))

    async def rollback(self, ctx: RunContext) -> None:
        if self.mac_at != "a":
            await self.move_frames(ctx, "a")

    def record(self) -> dict[str, Any]:
        return {"mode": self.name, "frames_sent_to": self.mac_at}
