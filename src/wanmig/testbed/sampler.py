"""What an interface sent, sampled through one run: the send rate over time for plots.

One netlink socket in the namespace, opened once, is read every ``interval_s``: no
process per sample (``netns.tx_bytes`` starts one), so sampling a 2-core machine through
a migration costs next to nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pyroute2 import AsyncIPRoute

from .netns import Namespace

log = logging.getLogger(__name__)


class TxSampler:
    """``(time.monotonic() s, bytes sent so far)`` of ``ifname`` in ``ns``, every
    ``interval_s`` from ``run()`` until ``stop()``, which takes one last sample; a failed
    read ends the sampling with what it had (the plot then ends early), never the run."""

    def __init__(self, ns: Namespace, ifname: str, interval_s: float = 0.25) -> None:
        self.ns, self.ifname, self.interval_s = ns, ifname, interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = asyncio.Event()

    def __repr__(self) -> str:
        return f"TxSampler({self.ns.name}/{self.ifname}, {len(self.samples)} samples)"

    @property
    def sent(self) -> int | None:
        """Bytes sent from the first sample to the last; None before two samples."""
        if len(self.samples) < 2:
            return None
        return self.samples[-1][1] - self.samples[0][1]

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        try:
            async with AsyncIPRoute(netns=self.ns.name) as ipr:
                while True:
                    msg = (await ipr.link("get", ifname=self.ifname))[0]
                    stats = msg.get("IFLA_STATS64")
                    self.samples.append((time.monotonic(), int(stats["tx_bytes"])))
                    if self._stop.is_set():
                        return
                    try:
                        await asyncio.wait_for(self._stop.wait(), self.interval_s)
                    except TimeoutError:
                        pass
        except (OSError, KeyError, TypeError, IndexError) as exc:
            log.warning("sampling %s/%s stopped: %s", self.ns.name, self.ifname, exc)
