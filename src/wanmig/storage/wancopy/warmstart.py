"""wancopy's warm start: a fresh stream's first round trip at its share of the line.

A new TCP connection sends 10 segments in its first round trip and doubles per
round trip after, so on the continental link (100 Mbit/s, 50 ms) a fresh
connection needs about six round trips to reach the link's rate.  A copy pays
that once per connection, whatever its size: on the testbed (a raw-socket
script, 2 runs each), 6.5 MB over one fresh paced connection took 834 ms, 264
ms beyond its bytes at the link's rate and one round trip; with the initial
window at the path's bandwidth-delay product, 140 ms (what is left is the
receiver's: its first window is 64 KiB, however the route is set, and grows
from there).  In a whole migration the fetch's time did not measurably shrink
(bench storage runs 16-17): beside B's TCG guest the copy's own CPU is as
large as the ramp was.

The kernel's knob is the route's ``initcwnd``.  A policy rule scopes it to
connections to wancopy's port from A's namespace, so QEMU's channels and the
client keep Linux's default.  It is safe only because every stream is paced at
its share of the line (``SO_MAX_PACING_RATE``, endpoint's ``--pace``): the
larger first window leaves at the line's rate, not as one burst into the
bottleneck's queue.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ...errors import NetworkError

if TYPE_CHECKING:
    from ...testbed.netns import Namespace

MSS = 1448
#: Linux's own initial window (RFC 6928), the least this sets.
DEFAULT_INITCWND = 10
#: The most this sets: a BDP of about 1.4 MB per stream.
MAX_INITCWND = 1000
#: Rule priorities and table ids: one pair per warm start, below ``main`` (32766).
FIRST_ID = 10810
_ids = itertools.count()


def initial_window(line_bps: float | None, rtt_ms: float, streams: int) -> int:
    """Segments in one stream's share of the path's bandwidth-delay product."""
    if not line_bps or rtt_ms <= 0:
        return DEFAULT_INITCWND
    share = line_bps / 8 * rtt_ms / 1000 / max(1, streams)
    return max(DEFAULT_INITCWND, min(MAX_INITCWND, math.ceil(share / MSS)))


@dataclass
class WarmStart:
    """The rule and route in ``ns`` that give TCP connections to ``ip:port`` an initial
    window of ``segments``; ``add`` then ``remove``."""

    ns: Namespace
    ip: str
    port: int
    segments: int
    table: int = 0

    async def add(self) -> None:
        self.table = FIRST_ID + next(_ids) % 1000
        try:
            async with AsyncIPRoute(netns=self.ns.name) as ipr:
                # the route the kernel uses to reach B now, copied with the larger window
                found = list(await ipr.route("get", dst=self.ip))
                if not found:
                    raise NetworkError(f"warm start: no route to {self.ip} in {self.ns.name}")
                oif, gateway = found[0].get("RTA_OIF"), found[0].get("RTA_GATEWAY")
                await ipr.route("add", dst=f"{self.ip}/32", oif=oif, table=self.table,
                                metrics={"initcwnd": self.segments},
                                **({"gateway": gateway} if gateway else {}))
                await ipr.rule("add", table=self.table, priority=self.table, ip_proto=6,
                               dport_range=f"{self.port}:{self.port}")
        except NetlinkError as exc:
            await self.remove()
            raise NetworkError(f"warm start in {self.ns.name}: {exc}", cause=exc) from exc

    async def remove(self) -> None:
        """Both gone (also when the namespace already is: nothing is left to remove)."""
        if not self.table:
            return
        table, self.table = self.table, 0
        try:
            async with AsyncIPRoute(netns=self.ns.name) as ipr:
                for what, args in (("rule", {"table": table, "priority": table}),
                                   ("route", {"dst": f"{self.ip}/32", "table": table})):
                    try:
                        await getattr(ipr, what)("del", **args)
                    except NetlinkError:
                        pass    # not made (add failed half-way)
        except (OSError, NetlinkError):
            pass                # the namespace is gone, and with it both
