"""The pure parts of the guest survey: RAM layout and the page counter."""

from __future__ import annotations

import os

import math

import pytest

from wanmig.memory.survey import PAGE, GuestSurvey, _PageCounter, ram_ranges, working_set


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
                    dirty_rate_bytes_s=0.0, working_set_bytes=None, dirty_1s_bytes=0.0,
                    dirty_3s_bytes=0.0, seconds=0.1)
    assert 0.95 < s.compress_ratio <= 1.0
    assert s.to_dict()["compress_ratio"] == round(s.compress_ratio, 3)


@pytest.mark.parametrize("rate, wss", [(50e6, 64 << 20), (20e6, 64 << 20), (5e6, 16 << 20)])
def test_working_set_recovered_from_two_periods(rate: float, wss: int) -> None:
    def dirtied(t: float) -> float:
        return wss * (1 - math.exp(-rate * t / wss))
    r, w = working_set(dirtied(1), dirtied(3), 1 << 30)
    assert w is not None and abs(w - wss) / wss < 0.01
    assert abs(r - rate) / rate < 0.01


def test_unbounded_or_idle_guests_have_no_working_set() -> None:
    assert working_set(10e6, 30e6, 1 << 30) == (10e6, None)    # linear: never saturates
    assert working_set(4096.0, 4096.0, 1 << 30)[1] is None       # next to nothing dirtied
