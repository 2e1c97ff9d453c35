"""The guest's disk write latency, as ``guestd diskwrite`` reports it on the console.

Once a second the rewriter prints ``wanmig-diskio n=N bytes=B lat=K:C,...``:
C of its N O_DSYNC writes that second took a latency in bucket K, which
covers [2^(K/4), 2^((K+1)/4)) microseconds (guestd.c, "disk rewriter").
Summed over the lines of a stretch of the run, the buckets give that
stretch's latency quantiles to within a bucket (19 %); a quantile is
reported as its bucket's upper bound.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

_LINE = re.compile(r"^wanmig-diskio n=(\d+) bytes=(\d+) lat=((?:\d+:\d+,?)*)$")


@dataclass
class DiskIo:
    writes: int = 0
    bytes: int = 0
    buckets: Counter[int] = field(default_factory=Counter)

    def add(self, line: str) -> bool:
        """Count one console line; False if it is not a rewriter line."""
        m = _LINE.match(line.strip())
        if not m:
            return False
        self.writes += int(m.group(1))
        self.bytes += int(m.group(2))
        for item in filter(None, m.group(3).split(",")):
            k, c = item.split(":")
            self.buckets[int(k)] += int(c)
        return True

    def quantile_ms(self, q: float) -> float | None:
        """The ``q`` quantile of the write latency (its bucket's upper bound), in ms."""
        total = sum(self.buckets.values())
        if not total:
            return None
        rank, seen = q * total, 0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen >= rank:
                return round(2 ** ((k + 1) / 4) / 1000, 3)
        return None

    def summary(self, prefix: str) -> dict[str, float | int | None]:
        return {f"{prefix}_p50_ms": self.quantile_ms(0.5),
                f"{prefix}_p99_ms": self.quantile_ms(0.99),
                f"{prefix}_writes": self.writes or None}


def diskio_from_lines(lines: Iterable[str]) -> DiskIo:
    io = DiskIo()
    for line in lines:
        io.add(line)
    return io
