"""B answers for the VM's old gateway, so a guest that moved needs no change.

The guest's gateway is router A (10.1.0.1), whose MAC its ARP cache holds.
In the modes where A's subnet is not stretched to B (``route``,
``mobile-ip``) B's router takes that MAC on B's LAN (an anycast gateway MAC,
as EVPN's distributed gateway does) and answers ARP for the gateway's address
(proxy ARP, without the kernel's default proxy delay), so the guest's frames
to its gateway are routed by B's router from the first one on.
"""

from __future__ import annotations

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import NetworkError
from ..testbed import Testbed

NUD_PERMANENT, NTF_PROXY = 0x80, 0x08


async def lan_mac(tb: Testbed, site: str) -> str:
    """The MAC of a site router's LAN interface."""
    async with AsyncIPRoute(netns=tb.router(site).name) as ipr:
        return str((await ipr.link("get", ifname="lan0"))[0].get("IFLA_ADDRESS"))


async def answer_for_old_gateway(tb: Testbed) -> None:
    """B's router takes router A's LAN MAC and proxies A's gateway address on B's LAN."""
    gateway = tb.addr.gateway("a")
    try:
        mac = await lan_mac(tb, "a")
        async with AsyncIPRoute(netns=tb.router_b.name) as ipr:
            index = (await ipr.link_lookup(ifname="lan0"))[0]
            await ipr.link("set", index=index, state="down")
            await ipr.link("set", index=index, address=mac)
            await ipr.link("set", index=index, state="up")
            await ipr.neigh("add", dst=gateway, ifindex=index, flags=NTF_PROXY)
    except (NetlinkError, IndexError) as exc:
        raise NetworkError(f"cannot make B's router the VM's gateway: {exc}",
                           cause=exc) from exc
    await tb.router_b.sysctl("net.ipv4.neigh.lan0.proxy_delay", "0")
