"""The HTML report, built from saved JSON only: a record with its series, an old record
without them, bench documents, and the CLI's answer to a file that is neither."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from wanmig.cli import app
from wanmig.probe.stats import downsample
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
from wanmig.report.html import write_html

PNG = b"\x89PNG\r\n\x1a\n"


def record(series: bool = True) -> ResultRecord:
    """A precopy run of 10 s: phases, QEMU's trace, and (``series``) the client's series."""
    phases = [Phase(name=n, start_ms=a, end_ms=b) for n, a, b in (
        ("prepare", 0, 200), ("storage", 200, 201), ("memory", 201, 9000),
        ("switchover", 9000, 9400), ("redirect", 9400, 9402), ("finish", 9402, 9420))]
    trace = [(t * 250.0, 1 + t // 12, max(0, 200_000_000 - t * 6_000_000), t * 3_000_000, 0)
             for t in range(35)]
    data: dict[str, Any] = {}
    if series:
        udp = [(t, None if 9100 <= t <= 9500 else 5.0 + (t % 7)) for t in range(-1000, 12000, 5)]
        http = [(t, None if t == 9200 else 15.0) for t in range(-1000, 12000, 200)]
        data["series"] = {
            "udp_rtt": [[round(r[0], 1), *r[1:]] for r in downsample(udp)],
            "http": downsample(http),
            "a_uplink_tx": [[t * 250.0, t * 3_100_000] for t in range(40)],
            "memory_trace_at_ms": 220.0, "marks": {"A stopped": 9050.0, "B resumed": 9390.0},
            "client_outage": [9100.0, 9505.0]}
    return ResultRecord(
        status="completed", scenario={"name": "demo"}, run_id="abc123",
        wan=WanInfo(profile="continental"), vm=VmInfo(ram_mib=256, disk_mib=64, workload="idle"),
        memory=MemoryResult(strategy="precopy", total_ms=8800, downtime_ms=130, trace=trace),
        storage=StorageResult(), network=NetworkResult(mode="l2-extend", client_outage_ms=405),
        integrity=IntegrityResult(guest_log_gaps=0), phases=phases, total_ms=9420,
        switchover_timeline={"pre_switchover": 2.0, "resume": 340.0}, wan_bytes=110_000_000,
        **data)


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)",
                                                    page)]


def test_a_record_with_series_draws_every_plot(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    write_html(json.loads(record().model_dump_json()), out)
    page = out.read_text()
    pngs = images(page)
    assert len(pngs) == 4 and all(p.startswith(PNG) and len(p) > 5000 for p in pngs)
    assert "plot left out" not in page
    for text in ("phases", "memory and disk remaining, send rate", "client&#x27;s UDP echo RTT",
                 "client&#x27;s HTTP request latency", "Key figures", "405.0 ms",
                 "104.9 MiB", "pre switchover"):
        assert text in page, text
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_an_old_record_without_series_renders_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "old.html"
    doc = json.loads(record(series=False).model_dump_json())
    del doc["series"], doc["wan_bytes"]   # as records written before the plots were
    write_html(doc, out)
    page = out.read_text()
    assert len(images(page)) == 2   # the phases, and QEMU's trace without an instant
    assert page.count("plot left out: this record has no series") == 2
    assert "no instant for migrate" in page and "Key figures" in page


def bench_doc() -> dict[str, Any]:
    """A memory bench of 2 strategies x 2 workloads; one target on auto's outage."""
    results, summary = [], []
    for strategy in ("precopy", "auto"):
        for workload in ("idle", "web"):
            case = f"{strategy}/{workload}"
            results.append({"status": "completed", "bench": {"case": case, "repeat": 0,
                            "strategy": strategy, "workload": workload}})
            fig = {"total_ms": 11000 if strategy == "precopy" else 4700,
                   "outage_ms": 680 if strategy == "precopy" else 440,
                   "wire_bytes": 5e8 if strategy == "precopy" else 2e8}
            summary.append({"case": case, "runs": 3, "figures": {
                k: {"median": v, "min": v * 0.9, "max": v * 1.1, "n": 3}
                for k, v in fig.items()}})
    checks = [{"check": "auto outage <= 500 ms (idle)", "ok": True, "detail": "440 ms",
               "limit": {"figure": "outage_ms", "value": 500, "case": "auto/idle"}}]
    return {"kind": "memory", "results": results, "summary": summary, "checks": checks,
            "settings": {"profile": "continental", "repeat": 3}, "seconds": 600.0}


def test_a_bench_draws_grouped_bars_and_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "bench.html"
    write_html(bench_doc(), out)
    page = out.read_text()
    assert len(images(page)) == 3 and "plot left out" not in page
    assert "auto outage &lt;= 500 ms (idle)" in page or "auto outage <= 500 ms (idle)" in page
    assert "10.0 min" in page


def test_a_bench_of_a_kind_without_bars_says_so(tmp_path: Path) -> None:
    out = tmp_path / "floor.html"
    write_html({"kind": "floor", "settings": {"cycles": 3}, "result": None}, out)
    page = out.read_text()
    assert not images(page) and "plot left out: a floor bench has no bars" in page


def test_cli_writes_html_for_a_record_and_a_bench(tmp_path: Path) -> None:
    rec, bench = tmp_path / "r.json", tmp_path / "b.json"
    record().write(rec)
    bench.write_text(json.dumps(bench_doc()))
    for path in (rec, bench):
        html = path.with_suffix(".html")
        result = CliRunner().invoke(app, ["report", str(path), "--html", str(html)])
        assert result.exit_code == 0, result.output
        assert f"HTML report: {html}" in result.output and images(html.read_text())


def test_cli_refuses_a_malformed_file_in_one_line(tmp_path: Path) -> None:
    cases = {"truncated.json": '{"status": "compl', "list.json": "[1, 2]",
             "partial.json": '{"status": "completed", "total_ms": 3}',
             "bench.json": '{"kind": "memory", "summary": [{"case": "auto/idle"}]}',
             "kind.json": '{"kind": "nonsense"}'}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        html = tmp_path / f"{name}.html"
        result = CliRunner().invoke(app, ["report", str(path), "--html", str(html)])
        assert result.exit_code == 2, (name, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wanmig: "), result.output
        assert not html.exists()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "no such file" in missing.output
