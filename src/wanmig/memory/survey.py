"""Measure a running guest's memory before ``auto`` chooses a strategy.

Three figures the model needs and QEMU can give without stopping the guest:

* the dirty rate and the writable working set: QEMU's ``calc-dirty-rate``
  (page sampling, the densest QEMU allows) over 1 s and over 3 s.  QEMU counts
  each page once per period, so a guest that rewrites a working set ``W`` at
  ``r`` bytes/s shows ``D(t) = W (1 - exp(-r t / W))`` distinct bytes;
  the two periods give both ``r`` and ``W`` (``working_set``);
* the non-zero bytes: what precopy's first pass and postcopy really send, since
  QEMU sends a zero page as a header only.  Read with ``pmemsave`` in 16 MiB
  pieces (each holds QEMU's big lock only briefly, so the client does not see
  the survey) into the run directory, scanned page by page, deleted at once;
* the compression ratio of those pages under zstd level 1, in the 512 KiB
  packets multifd uses, so the model sees what ``precopy-tuned`` would gain.

The guest keeps running while it is read, so the figures are a snapshot
taken over about a second, which is what a prediction needs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zstandard

from ..errors import MigrationError
from ..qemu.process import QemuVm

log = logging.getLogger("wanmig.memory.survey")

PAGE = 4096
PIECE = 16 * 2**20
PACKET = 128 * PAGE          # multifd's packet of 128 pages
MAX_SAMPLE_PAGES = 4096      # per GiB, the most calc-dirty-rate accepts
_ZERO_PAGE = bytes(PAGE)
_GIB = 2**30


@dataclass(frozen=True)
class GuestSurvey:
    ram_bytes: int
    nonzero_bytes: int
    compressed_bytes: int
    dirty_rate_bytes_s: float            # the write rate r
    working_set_bytes: int | None        # W; None when it looks unbounded
    dirty_1s_bytes: float                # what QEMU saw dirtied in 1 s ...
    dirty_3s_bytes: float                # ... and in 3 s
    seconds: float

    @property
    def compress_ratio(self) -> float:
        return self.nonzero_bytes / self.compressed_bytes if self.compressed_bytes else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compress_ratio": round(self.compress_ratio, 3)}


def working_set(d1: float, d3: float, ram_bytes: int) -> tuple[float, int | None]:
    """Write rate and working set from the bytes dirtied in 1 s and in 3 s.

    With ``y = exp(-r / W)``: ``D3 / D1 = 1 + y + y**2``, so ``y`` follows, then
    ``W = D1 / (1 - y)`` and ``r = -W ln y``.  A ratio near 3 means no
    saturation in 3 s (``W`` unknown, ``r = D1``); a guest that dirties almost
    nothing is reported as such.
    """
    if d1 < PAGE * 16 or d3 <= 0:
        return d1, None
    q = min(d3 / d1, 3.0)
    if q >= 2.9:
        return d1, None
    q = max(q, 1.0 + 1e-6)
    y = (-1.0 + math.sqrt(4.0 * q - 3.0)) / 2.0
    w = min(d1 / (1.0 - y), float(ram_bytes))
    return -w * math.log(y), int(w)


def ram_ranges(ram_bytes: int) -> list[tuple[int, int]]:
    """Guest-physical (start, size) of RAM on QEMU's ``pc`` machine.

    Up to 3.5 GiB, RAM sits at address 0; above, the first 3 GiB stay low and
    the rest is mapped from 4 GiB, above the PCI hole.
    """
    if ram_bytes < 0xE0000000:
        return [(0, ram_bytes)]
    return [(0, 3 * _GIB), (4 * _GIB, ram_bytes - 3 * _GIB)]


class _PageCounter:
    """Non-zero pages and their zstd-compressed size, fed piece by piece."""

    def __init__(self) -> None:
        self.nonzero = 0
        self.compressed = 0
        self._pending = bytearray()
        self._zstd = zstandard.ZstdCompressor(level=1)

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        for off in range(0, len(view) - PAGE + 1, PAGE):
            page = view[off:off + PAGE]
            if page != _ZERO_PAGE:
                self.nonzero += PAGE
                self._pending += page
                if len(self._pending) >= PACKET:
                    self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.compressed += len(self._zstd.compress(bytes(self._pending)))
            self._pending.clear()

    def done(self) -> tuple[int, int]:
        self._flush()
        return self.nonzero, self.compressed


async def dirty_rate(vm: QemuVm, *, calc_time_s: int = 1, timeout: float = 30.0) -> float:
    """Distinct bytes the guest dirtied per second over ``calc_time_s``, by QEMU's
    page sampling."""
    await vm.execute("calc-dirty-rate", {"calc-time": calc_time_s,
                                         "sample-pages": MAX_SAMPLE_PAGES})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        info = await vm.execute("query-dirty-rate")
        if info.get("status") == "measured":
            return float(info["dirty-rate"]) * 2**20  # QEMU reports MiB/s
    raise MigrationError(f"calc-dirty-rate gave no result within {timeout:.0f}s")


async def survey_guest(vm: QemuVm, ram_bytes: int, workdir: Path) -> GuestSurvey:
    t0 = time.monotonic()
    d1 = await dirty_rate(vm, calc_time_s=1)
    d3 = 3 * await dirty_rate(vm, calc_time_s=3)
    rate, wss = working_set(d1, d3, ram_bytes)
    counter = _PageCounter()
    piece_file = workdir / f"{vm.name}.survey"
    try:
        for start, size in ram_ranges(ram_bytes):
            for off in range(0, size, PIECE):
                n = min(PIECE, size - off)
                await vm.execute("pmemsave", {"val": start + off, "size": n,
                                              "filename": str(piece_file)})
                data = await asyncio.to_thread(piece_file.read_bytes)
                await asyncio.to_thread(counter.feed, data)
    finally:
        piece_file.unlink(missing_ok=True)
    nonzero, compressed = counter.done()
    survey = GuestSurvey(ram_bytes=ram_bytes, nonzero_bytes=nonzero,
                         compressed_bytes=compressed, dirty_rate_bytes_s=rate,
                         working_set_bytes=wss, dirty_1s_bytes=d1, dirty_3s_bytes=d3,
                         seconds=round(time.monotonic() - t0, 3))
    log.info("guest survey: %s", survey.to_dict())
    return survey
