"""The pure parts of the guest survey: RAM layout and the page counter."""

from __future__ import annotations

import os

from wanmig.memory.survey import PAGE, GuestSurvey, _PageCounter, ram_ranges


def test_ram_below_the_pci_hole_is_one_range() -> None:
    assert ram_ranges(512 << 20) == [(0, 512 << 20)]


def test_large_ram_is_split_around_the_pci_hole() -> None:
    assert ram_ranges(8 << 30) == [(0, 3 << 30), (4 << 30, 5 << 30)]


def test_counter_skips_zero_pages_and_compresses_the_rest() -> None:
    c = _PageCounter()
    text = (b"wanmig " * 600)[:PAGE]
    c.feed(bytes(PAGE) * 3 + text * 200 + os.urandom(PAGE) * 1)
    nonzero, compressed = c.done()
    assert nonzero == 201 * PAGE
    assert 0 < compressed < nonzero / 5     # repetitive text compresses well


def test_random_pages_do_not_compress() -> None:
    c = _PageCounter()
    c.feed(os.urandom(64 * PAGE))
    nonzero, compressed = c.done()
    s = GuestSurvey(ram_bytes=1 << 20, nonzero_bytes=nonzero, compressed_bytes=compressed,
                    dirty_rate_bytes_s=0.0, seconds=0.1)
    assert 0.95 < s.compress_ratio <= 1.0
    assert s.to_dict()["compress_ratio"] == round(s.compress_ratio, 3)
