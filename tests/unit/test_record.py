"""Result records round-trip through JSON and render as a report."""

from pathlib import Path

from rich.console import Console

from wanmig.record import (
    IntegrityResult,
    MemoryResult,
    NetworkResult,
    Phase,
    ResultRecord,
    StorageResult,
    VmInfo,
    WanInfo,
)
from wanmig.report import render_record
from wanmig.wan.profiles import LinkProfile


def _record() -> ResultRecord:
    return ResultRecord(
        status="completed", scenario={"name": "demo"}, wan=WanInfo(profile="continental", backend="forwarder",
                    link=LinkProfile(name="continental", rtt_ms=50, rate_mbit=100),
                    rtt_measured_ms=50.4),
        vm=VmInfo(ram_mib=256, disk_mib=64, workload="idle", accel="tcg"),
        memory=MemoryResult(strategy="precopy", total_ms=1234, downtime_ms=87, bytes=3 << 20,
                            rounds=3),
        storage=StorageResult(strategy="none"),
        network=NetworkResult(mode="l2-extend", client_outage_ms=140.5, tcp_survived=True),
        integrity=IntegrityResult(guest_log_gaps=0, guest_log_records=500),
        phases=[Phase(name="prepare", start_ms=0, end_ms=10),
                Phase(name="memory", start_ms=10, end_ms=1200)],
        total_ms=1200)


def test_round_trip(tmp_path: Path) -> None:
    rec = _record()
    path = tmp_path / "r.json"
    rec.write(path)
    again = ResultRecord.read(path)
    assert again == rec
    assert again.network.client_outage_ms == 140.5


def test_report_shows_the_figures() -> None:
    console = Console(width=120, record=True)
    console.print(render_record(_record()))
    text = console.export_text()
    for expected in ("completed", "87.0 ms", "140.5 ms", "3.0 MiB", "prepare", "memory",
                     "continental, RTT 50 ms, 100 Mbit/s", "50.4 ms", "forwarder"):
        assert expected in text


def _text(rec: ResultRecord) -> str:
    console = Console(width=160, record=True)
    console.print(render_record(rec))
    return console.export_text()


def test_report_lays_out_the_switchover_step_by_step() -> None:
    assert "switchover, from" not in _text(_record())   # old records: no such table
    rec = _record().model_copy(update={"switchover_timeline": {
        "client_gap_start": -3.0, "pre_switchover": 2.0, "continue": 9.0,
        "source_completed": 107.5, "resume": 215.0, "client_gap_end": 402.0}})
    text = _text(rec)
    assert "switchover, from the source's STOP" in text
    row = next(line for line in text.splitlines() if "source completed" in line)
    assert "107.5 ms" in row and "98.5 ms" in row   # when, and since the step before
    assert "187.0 ms" in next(line for line in text.splitlines() if "client gap end" in line)


def test_report_shows_what_the_client_got_between_marks() -> None:
    windows = [{"until": "migration-start", "t_ms": 2000.0, "udp_sent": 400, "udp_received": 400,
                "udp_rtt_p50_ms": 1.8, "udp_max_gap_ms": 12.0},
               {"until": "switchover-done", "t_ms": 9000.0, "udp_sent": 1400,
                "udp_received": 1050, "udp_rtt_p50_ms": 40.0, "udp_max_gap_ms": 380.0}]
    net = _record().network.model_copy(update={
        "probe": {"udp_sent": 1800, "udp_received": 1450}, "probe_windows": windows,
        "probe_interval_ms": 5.0})
    text = _text(_record().model_copy(update={"network": net}))
    assert "one every 5 ms" in text
    assert "1050 / 1400 (75%), p50 RTT 40.0 ms" in text
    assert "did not keep up" not in text
    # a guest that lost echoes at rest, before anything moved: the report says so
    windows[0] = {**windows[0], "udp_received": 300}
    net = net.model_copy(update={"probe_windows": windows})
    assert "did not keep up with the probe" in _text(_record().model_copy(update={"network": net}))


def test_report_says_what_the_survey_measured_and_only_auto_says_why() -> None:
    survey = {"dirty_rate_bytes_s": 22.6e6, "nonzero_bytes": 150 << 20, "compress_ratio": 1.59}
    predicted = {"total_ms": 25519.0, "outage_ms": 254.3}
    decision = {"survey": survey, "predicted": predicted}

    def record(decision: dict) -> ResultRecord:
        return _record().model_copy(update={"memory": MemoryResult(
            strategy="precopy-tuned", trace=[(250.0, 1, 4096, 8192, 0)], decision=decision)})

    text = _text(record(decision))
    assert "dirty 22.6 MB/s" in text and "25.52 s / 254.3 ms" in text
    assert "auto: why" not in text and "auto's choice" not in text
    text = _text(record({**decision, "chosen": "precopy-tuned",
                         "reason": "precopy-tuned: shortest total"}))
    assert "auto's choice" in text and "shortest total" in text


def test_cli_report_reads_a_saved_record(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from wanmig.cli import app

    path = tmp_path / "r.json"
    _record().write(path)
    ok = CliRunner().invoke(app, ["report", str(path)])
    assert ok.exit_code == 0 and "140.5 ms" in ok.output and "completed" in ok.output
    path.write_text('{"status": "completed"}')
    bad = CliRunner().invoke(app, ["report", str(path)])
    assert bad.exit_code == 2 and "not a result record" in bad.output


def test_write_replaces_the_file_by_rename(tmp_path: Path, monkeypatch) -> None:
    import os
    import stat

    from wanmig import fileio

    path = tmp_path / "results" / "r.json"
    _record().write(path)
    first = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.link(path, tmp_path / "reader.json")  # a reader holding the old file
    rec = _record().model_copy(update={"status": "failed"})
    rec.write(path)
    assert ResultRecord.read(path) == rec
    assert (tmp_path / "reader.json").read_text() == first  # not rewritten in place

    # a write that fails before the rename leaves the previous record whole, no debris
    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", fail)
    try:
        _record().write(path)
    except OSError as exc:
        assert exc.errno == 28
    else:
        raise AssertionError("the failed write was not reported")
    assert ResultRecord.read(path) == rec
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_report_shows_the_app_orders_and_a_budget_that_capped() -> None:
    assert "application orders" not in _text(_record())
    assert "bandwidth budget" not in _text(_record())
    rec = _record().model_copy(update={
        "integrity": IntegrityResult(guest_log_gaps=0, app_orders=140, app_first_order=1,
                                     app_last_order=142, app_order_gaps=2),
        "budget": {"rate_mbit": 48.0, "storage_share": 0.25,
                   "changes": [{"at_ms": 0.0, "rate_mbit": 16.0, "by": "scenario"},
                               {"at_ms": 9000.0, "rate_mbit": 48.0, "by": "budget file"}],
                   "grants": [{"at_ms": 9000.0, "consumer": "storage", "rate_mbit": 48.0,
                               "capped": True}]}})
    text = _text(rec)
    assert "140 (up to 142) / 2" in next(ln for ln in text.splitlines() if "application" in ln)
    row = next(ln for ln in text.splitlines() if "bandwidth budget" in ln)
    assert "16 Mbit/s (scenario), then 48 Mbit/s (budget file)" in row
