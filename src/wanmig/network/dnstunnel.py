"""``dns-tunnel``: at B the VM gets an address of B's subnet and a new DNS record; the
connections already open keep the old address through a tunnel from A.

Bradford et al. (VEE 2007) update dynamic DNS and tunnel the open connections
from the old site.  Here:

* ``setup`` (before the guest boots and the client starts): Knot DNS at router
  A (``network/dns.py``, on ``Addressing.dns_ip``) serves the VM's zone, the
  record at its normal TTL (``NORMAL_TTL_S``); then wanmig lowers the TTL to
  ``[network] dns_ttl_s`` with an RFC 2136 update signed with the run's TSIG
  key, as an operator does before a move.  The client resolves the VM by name
  through that server for every new HTTP connection (a caching stub resolver:
  an answer lives for its TTL); its UDP and TCP probes are the connections
  opened before the move, to the old address;
* ``prepare`` / ``switchover`` / ``rollback``: as ``mobile-ip`` (the tunnel
  from router A to B's hypervisor carries the old address; B's router is the
  guest's gateway there);
* ``redirect`` (B runs): ``announce-self``; the guest's agent adds B's address
  (``guestd agent`` over virtio-serial: no DHCP client has to notice the move),
  and the record is updated from B's hypervisor, across the WAN, to the new
  address (``dns_updated``);
* ``finish``: one TTL (and a second) for the old answer to leave the caches;
* ``close``: the DNS server stopped.

The record's ``dns_switch_ms`` is from the update until the client's resolver
answered the new address, ``new_conn_ms`` from B's resume until a new
connection by name was answered at the new address (the targets: within the
TTL and a second).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..context import RunContext
from ..errors import NetworkError
from .dns import KnotServer, TsigKey, update_address
from .mobileip import MobileIp

#: The record's TTL before wanmig lowers it for the move.
NORMAL_TTL_S = 300
#: ``finish`` waits the TTL and this long: until every cache has the new answer.
CACHE_MARGIN_S = 1.0


class DnsTunnel(MobileIp):
    name: ClassVar[str] = "dns-tunnel"

    def __init__(self) -> None:
        super().__init__()
        self.server: KnotServer | None = None
        self.key = TsigKey.fresh()
        self.ttl_s: int | None = None
        self.new_address: str | None = None
        self.updated_at: float | None = None
        self.update_ms: float | None = None

    def __repr__(self) -> str:
        return f"DnsTunnel(server={self.server!r}, new address={self.new_address})"

    def client_name(self) -> tuple[str, str] | None:
        return None if self.server is None else (self.server.fqdn, self.server.listen)

    async def setup(self, ctx: RunContext) -> None:
        tb = ctx.testbed
        dns_ip = tb.addr.dns_ip()
        try:
            async with AsyncIPRoute(netns=tb.router_a.name) as ipr:
                lo = (await ipr.link_lookup(ifname="lo"))[0]
                await ipr.addr("add", index=lo, address=dns_ip, prefixlen=32)
        except (NetlinkError, IndexError) as exc:
            raise NetworkError(f"dns-tunnel: cannot give router A the DNS address: {exc}",
                               cause=exc) from exc
        self.server = KnotServer(tb.router_a.name, ctx.run_dir, dns_ip, tb.addr.vm_ip,
                                 NORMAL_TTL_S, self.key, ctx.registry)
        ctx.ui.step(f"dns-tunnel: Knot DNS for {self.server.fqdn} at {dns_ip}, TTL "
                    f"{NORMAL_TTL_S} s lowered to {ctx.scenario.network.dns_ttl_s} s")
        await self.server.start()
        self.ttl_s = ctx.scenario.network.dns_ttl_s
        await update_address(tb.site_a.name, dns_ip, self.key, tb.addr.vm_ip, self.ttl_s)

    async def redirect(self, ctx: RunContext) -> None:
        assert ctx.dst is not None and self.server is not None and self.ttl_s is not None
        await super().redirect(ctx)
        tb = ctx.testbed
        new = tb.addr.vm_ip_at("b")
        await ctx.dst.agent(f"addr {new}/24")
        started = time.monotonic()
        await update_address(tb.site_b.name, self.server.listen, self.key, new, self.ttl_s)
        self.updated_at = time.monotonic()
        self.update_ms = round((self.updated_at - started) * 1000, 1)
        self.new_address = new

    async def finish(self, ctx: RunContext) -> None:
        """The move is done when no cache may still hold the old answer: one TTL (and a
        second) after the update.  The client keeps watching meanwhile."""
        assert self.ttl_s is not None
        ctx.ui.step(f"dns-tunnel: {self.ttl_s} s for the old answer to leave the caches")
        await asyncio.sleep(self.ttl_s + CACHE_MARGIN_S)

    async def close(self) -> None:
        await super().close()
        if self.server is not None:
            await self.server.stop()

    def record(self) -> dict[str, Any]:
        return {**super().record(), "mode": self.name, "dns_ttl_s": self.ttl_s,
                "dns_name": self.server.fqdn if self.server else None,
                "dns_new_address": self.new_address, "dns_update_ms": self.update_ms}

    def instants(self) -> dict[str, float]:
        out = super().instants()
        if self.updated_at is not None:
            out["dns_updated"] = self.updated_at
        return out
