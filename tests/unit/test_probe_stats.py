"""Gap and percentile arithmetic behind the probe figures (pure, fast)."""

from __future__ import annotations

import random

import pytest

from wanmig.probe.stats import (
    Gap,
    GapTracker,
    last_mark_before,
    max_gap,
    ns_to_ms,
    percentile,
    relative_to_marks,
)


def test_max_gap_finds_largest_and_its_start() -> None:
    assert max_gap([0, 1, 2, 10, 11]) == Gap(8, 2)


def test_max_gap_first_of_equal_gaps_wins() -> None:
    assert max_gap([0, 5, 10]) == Gap(5, 0)


def test_max_gap_trivial_inputs() -> None:
    assert max_gap([]) == Gap(0.0, 0.0)
    assert max_gap([3.0]) == Gap(0.0, 3.0)
    assert max_gap([], end=10.0) == Gap(0.0, 0.0)  # never answered: callers check counts


def test_max_gap_closes_open_gap_at_end() -> None:
    # replies stop at 3 and never resume: the silence until stop is the outage
    assert max_gap([0, 1, 2, 3], end=100) == Gap(97, 3)
    # an end before the last reply (late drain replies) changes nothing
    assert max_gap([0, 1, 5], end=4) == Gap(4, 1)


def test_gap_tracker_matches_max_gap() -> None:
    rng = random.Random(7)
    for _ in range(50):
        times = sorted(rng.randrange(0, 10_000) for _ in range(rng.randrange(1, 60)))
        end = times[-1] + rng.randrange(0, 3000)
        tracker = GapTracker()
        for t in times:
            tracker.add(t)
        assert tracker.count == len(times)
        assert tracker.result(end=end) == max_gap(times, end=end)
        assert tracker.result() == max_gap(times)


def test_gap_tracker_empty() -> None:
    assert GapTracker().result(end=5) == Gap(0.0, 0.0)
    assert "count=0" in repr(GapTracker())


@pytest.mark.parametrize(("q", "expected"), [(0, 1), (50, 2.5), (100, 4), (25, 1.75)])
def test_percentile_linear_interpolation(q: float, expected: float) -> None:
    assert percentile([4, 1, 3, 2], q) == pytest.approx(expected)


def test_percentile_edge_cases() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile(iter([1.0, 2.0]), 50) == 1.5  # any iterable
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_p99_of_mostly_fast_samples_sees_the_tail() -> None:
    samples = [1.0] * 980 + [100.0] * 20
    assert percentile(samples, 50) == 1.0
    assert percentile(samples, 99) == 100.0


def test_ns_to_ms_rounds_to_microseconds() -> None:
    assert ns_to_ms(1_234_567) == 1.235
    assert ns_to_ms(300_000_000) == 300.0


def test_marks_relative_and_last_before() -> None:
    marks = {"start": 0.0, "switchover": 1000.0, "done": 2000.0}
    assert relative_to_marks(1012.5, marks) == {"start": 1012.5, "switchover": 12.5,
                                                "done": -987.5}
    assert last_mark_before(1012.5, marks) == ("switchover", 12.5)
    assert last_mark_before(1000.0, marks) == ("switchover", 0.0)
    assert last_mark_before(-1.0, marks) is None
    assert last_mark_before(5.0, {}) is None


def test_downsample_keeps_every_spike_and_loss_within_its_bound() -> None:
    from wanmig.probe.stats import downsample

    points = [(float(t), None if t in (4000, 4001) else (900.0 if t == 7777 else 5.0))
              for t in range(10_000)]
    rows = downsample(points, max_rows=1000)
    assert len(rows) == 1000 and all(r[2] == 10 for r in rows)
    assert sum(r[3] for r in rows) == 2 and max(r[1] for r in rows) == 900.0
    assert rows[400] == [4000.0, 5.0, 10, 2]
    assert downsample([(1.0, None)]) == [[1.0, None, 1, 1]] and downsample([]) == []
    assert downsample(points[:10]) == [[float(t), 5.0, 1, 0] for t in range(10)]
