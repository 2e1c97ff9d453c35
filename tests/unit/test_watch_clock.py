"""The probe's clock read against the controller's through the marks (watch.py)."""

from __future__ import annotations

from wanmig.watch import ClientWatch


def bare_watch() -> ClientWatch:
    watch = object.__new__(ClientWatch)   # no probe, no testbed: only the clock reads
    watch.clock_reads = []
    return watch


def test_no_mark_no_offset() -> None:
    watch = bare_watch()
    assert watch.clock_offset_ms() is None and watch.to_monotonic(5.0) is None


def test_the_mark_that_answered_soonest_sets_the_offset() -> None:
    watch = bare_watch()
    watch.clock_reads += [(0.004, 1000.0), (0.001, 1002.0), (0.009, 990.0)]
    assert watch.clock_offset_ms() == 1002.0
    assert watch.clock_offset_ms(last=1) == 990.0
    assert watch.to_monotonic(500.0) == 1.502
    assert watch.to_monotonic(None) is None
