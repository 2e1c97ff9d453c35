"""The guest's memory check (``guestd dirty``): whole after a real migration, and able
to see a page changed behind its back.

The check lives in the guest (``guest/guestd.c``): every working-set page holds
its index, a per-page sequence number and a checksum, the dirtier keeps the seq
it expects of every page and sweeps the whole set about once a second, printing
``wanmig-memcheck`` lines on the serial console (``integrity.memcheck_from_console``).

To prove it can fail, one guest runs with its RAM in a shared file
(``memory-backend-file,share=on``): the host finds working-set pages in it by
their header and changes three of them -- a torn page, an older version that is
self-consistent (what a lost update leaves), a page that landed one off -- and
the guest must report each one on its console.
"""

from __future__ import annotations

import asyncio
import mmap
import struct
from pathlib import Path

import pytest

from wanmig.config import parse_scenario
from wanmig.integrity import MEMCHECK_PAGE, MEMCHECK_SWEEP_PREFIX, BadPage, \
    memcheck_from_console, page_checksum
from wanmig.orchestrator import Orchestrator
from wanmig.qemu.image import READY_MARKER, GuestImage, build_image, create_data_disk
from wanmig.qemu.process import QemuVm, VmConfig
from wanmig.registry import Registry, new_run_id

BOOT_TIMEOUT_S = 90.0   # TCG on a busy 2-core box; about 4 s when idle


@pytest.mark.root
@pytest.mark.qemu
async def test_a_dirty_guest_keeps_its_memory_whole_across_a_migration(
        leaves_nothing_behind) -> None:
    scenario = parse_scenario({
        "name": "memcheck-precopy", "memory": {"strategy": "precopy"},
        "vm": {"ram_mib": 192, "workload": "dirty", "dirty_mib": 16, "dirty_rate_mbps": 5}})
    rec = await Orchestrator(scenario).run()

    assert rec.status == "completed", rec.error
    i = rec.integrity
    assert i.guest_memory_sweeps is not None and i.guest_memory_sweeps >= 1, i
    assert i.guest_memory_errors == 0, i
    assert rec.memory.converged and rec.memory.bytes and rec.memory.bytes > 16 << 20


# ----------------------------------------------------------------------------- detection


def _pages_in(ram: mmap.mmap, working_set: int) -> dict[int, int]:
    """Working-set page index -> offset in guest RAM, for pages whose header and
    checksum fit (written once: seq 1, the dirtier runs at rate 0)."""
    found: dict[int, int] = {}
    for at in range(0, len(ram), MEMCHECK_PAGE):
        index, seq = struct.unpack_from("<QQ", ram, at)
        if seq == 1 and index < working_set and index not in found:
            page = ram[at:at + MEMCHECK_PAGE]
            if struct.unpack_from("<Q", page, 16)[0] == page_checksum(page):
                found[index] = at
    return found


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    return build_image()  # cached in ./build after the first run


@pytest.mark.qemu
@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
async def test_the_guest_reports_pages_changed_behind_its_back(guest_image: GuestImage) -> None:
    ram_mib, set_mib = 192, 8
    working_set = (set_mib << 20) // MEMCHECK_PAGE
    registry = Registry(new_run_id())
    ram_file = Path("/dev/shm") / f"wanmig-memcheck-{registry.run_id}.ram"
    try:
        disk = registry.run_dir / "data.raw"
        create_data_disk(disk, size_mib=8)
        cfg = VmConfig(name="vm1", image=guest_image, disk=disk, ram_mib=ram_mib,
                       mac="52:54:00:77:00:10", tap=None, ip_cidr="10.0.2.15/24",
                       accel="tcg", dirty=(set_mib, 0),   # rate 0: only the sweep reads
                       ram_file=ram_file)
        async with QemuVm(cfg, registry) as vm:
            await vm.wait_console(READY_MARKER, BOOT_TIMEOUT_S)
            await vm.wait_console_lines(MEMCHECK_SWEEP_PREFIX, 1, timeout=30.0)

            with ram_file.open("r+b") as f, mmap.mmap(f.fileno(), 0) as ram:
                found = await asyncio.to_thread(_pages_in, ram, working_set)
                # the guest process's pages, not a copy: every one of them is there once
                assert len(found) == working_set, f"{len(found)} of {working_set} pages found"
                torn, stale, moved, moved_from = (found[i] for i in (100, 200, 300, 301))
                ram[torn + 2000] ^= 0xFF
                old = bytearray(ram[stale:stale + MEMCHECK_PAGE])
                struct.pack_into("<Q", old, 8, 0)          # a version before the first
                struct.pack_into("<Q", old, 16, page_checksum(bytes(old)))
                ram[stale + 8:stale + 24] = old[8:24]
                ram[moved:moved + MEMCHECK_PAGE] = ram[moved_from:moved_from + MEMCHECK_PAGE]
            changed_at = memcheck_from_console(vm.console_lines()).sweep_lines
            # each is found by the sweep under way or the next; the one after finds none
            await vm.wait_console_lines(MEMCHECK_SWEEP_PREFIX, changed_at + 3, timeout=30.0)
            lines = vm.console_lines()
        print("\n".join(line for line in lines if "memcheck" in line))

        check = memcheck_from_console(lines)
        assert check.errors == 3, lines
        assert {b.page: b for b in check.bad_pages} == {
            100: BadPage(page=100, seq=1, expected=1, index=100, checksum_ok=False),
            200: BadPage(page=200, seq=0, expected=1, index=200, checksum_ok=True),
            300: BadPage(page=300, seq=1, expected=1, index=301, checksum_ok=True),
        }
        assert [b.page for b in check.bad_pages if b.stale] == [200]
        sweeps = [line for line in lines if line.startswith(MEMCHECK_SWEEP_PREFIX)]
        assert sweeps[-1].strip().endswith("errors=0")   # found ones were rewritten
    finally:
        ram_file.unlink(missing_ok=True)
        registry.close()
