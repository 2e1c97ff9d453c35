"""The storage model: predictions per strategy and auto's choice, on their output."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from wanmig.model.storage import (LAYER_ROUND_TRIPS, PRECOPY_SWITCH_MS, DiskMeasurements,
                                  choose_storage, predict_storage)

MB = 10**6


def _m(**kw: float) -> DiskMeasurements:
    base = {"overlay_bytes": 20 * MB, "allocated_bytes": 200 * MB, "dirty_bytes_s": 0.0,
            "drain_bytes_s": 11 * MB, "rtt_ms": 50.0, "memory_s": 5.0}
    return DiskMeasurements(**(base | kw))


def _by_name(m: DiskMeasurements) -> dict[str, object]:
    return {p.strategy: p for p in predict_storage(m)}


def test_an_idle_disk_goes_by_precopy_whose_outage_is_smallest() -> None:
    d = choose_storage(_m())
    assert d.chosen == "precopy"
    p = d.prediction()
    assert p.outage_extra_ms == PRECOPY_SWITCH_MS and p.passes == 1 and not p.throttles
    assert p.bytes == 20 * MB and p.depends_on_source_s == 0
    assert "precopy" in d.reason and "smallest added outage" in d.reason


def test_the_mirror_baseline_sends_the_base_and_never_converges_against_a_writer() -> None:
    idle, busy = _by_name(_m())["mirror"], _by_name(_m(dirty_bytes_s=0.1 * MB))["mirror"]
    assert idle.converges and idle.bytes == 200 * MB
    assert not busy.converges and "never ready" in busy.note


def test_precopy_passes_shrink_by_the_dirty_ratio() -> None:
    # r = 0.5; the disk gets 60 % of the link while memory moves, so it keeps up then
    p = _by_name(_m(dirty_bytes_s=5.5 * MB, storage_share=0.6))["precopy"]
    # 20 MB, then 10, 5, ... down to 50 ms of the link (0.55 MB): 6 passes after the bulk
    assert p.passes == 6 and not p.throttles
    assert 39 * MB < p.bytes - 5.5 * MB * 5.0 < 40 * MB


def test_a_writer_near_the_drain_rate_makes_precopy_throttle_and_auto_go_hybrid() -> None:
    d = choose_storage(_m(dirty_bytes_s=9 * MB))
    assert next(p for p in d.predictions if p.strategy == "precopy").throttles
    assert d.chosen == "hybrid" and "without throttling the guest" in d.reason
    h = d.prediction()
    assert h.outage_extra_ms == pytest.approx(LAYER_ROUND_TRIPS * 50 + 7)
    # hybrid depends on A for what was written after the bulk began; postcopy for the
    # overlay and what was written during memory
    post = next(p for p in d.predictions if p.strategy == "postcopy")
    assert h.depends_on_source_s < post.depends_on_source_s


def test_a_writer_as_fast_as_the_drain_makes_the_bulk_worthless() -> None:
    # everything the bulk sends is predicted rewritten before B runs: postcopy, the same
    # dependency on A with the bulk's bytes saved
    d = choose_storage(_m(dirty_bytes_s=11 * MB))
    by = {p.strategy: p for p in d.predictions}
    assert by["hybrid"].depends_on_source_s == pytest.approx(by["postcopy"].depends_on_source_s)
    assert d.chosen == "postcopy" and by["postcopy"].bytes < by["hybrid"].bytes


def test_a_deadline_for_b_running_picks_postcopy_when_the_bulk_would_miss_it() -> None:
    m = _m(overlay_bytes=2000 * MB)           # 3 minutes of bulk at 11 MB/s
    assert choose_storage(m).chosen == "precopy"
    d = choose_storage(m, within_s=30)
    assert d.chosen == "postcopy" and "within 30 s" in d.reason
    assert d.prediction().dest_running_s == 5.0


def test_an_impossible_deadline_takes_the_soonest() -> None:
    d = choose_storage(_m(memory_s=60.0), within_s=10)
    assert d.chosen == "postcopy" and "none has B running within 10 s" in d.reason


def test_measurements_are_validated() -> None:
    with pytest.raises(ValidationError):
        _m(drain_bytes_s=0)
    with pytest.raises(ValidationError):
        _m(dirty_bytes_s=-1)


def test_a_writer_above_the_disks_share_during_memory_makes_precopy_throttle() -> None:
    # bench storage run 5, auto/disk-5: 3.9 MB/s of new blocks, 12 MB/s of drain (r 0.32,
    # 3 passes) -- but 25 % of it while memory moves: precopy throttled the guest then
    m = _m(dirty_bytes_s=3.9 * MB, drain_bytes_s=12 * MB, overlay_bytes=17 * MB)
    by = _by_name(m)
    assert by["precopy"].passes == 3 and by["precopy"].throttles
    assert "while memory moves" in by["precopy"].note
    assert choose_storage(m).chosen == "hybrid"
    # a bigger share for the disk: it keeps up, and precopy's short outage wins
    assert choose_storage(m.model_copy(update={"storage_share": 0.5})).chosen == "precopy"
