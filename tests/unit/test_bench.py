"""The bench runner (repeats, median and range, the document rewritten after every run)
and the ``wanmig bench`` commands' refusals of bad options."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from wanmig.bench import runner
from wanmig.bench.runner import BenchRun, BenchState, check_repeat, spread, summarise
from wanmig.cli import app
from wanmig.errors import ConfigError, WanmigError
from wanmig.report import render_bench


@dataclass(frozen=True)
class FakeCase:
    name: str
    base: float

    @property
    def labels(self) -> dict[str, Any]:
        return {"base": self.base}


FIGURES = {"speed": lambda e: e.get("speed"), "late": lambda e: e.get("late")}


def _median_checks(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"case": row["case"], "check": "fast", "ok": row["figures"]["speed"]["median"] >= 10,
             "detail": ""} for row in summary]


def _bench(tmp_path: Path, repeat: int = 3, **kw: Any) -> BenchRun[FakeCase]:
    return BenchRun("fake", [FakeCase("a", 10.0), FakeCase("b", 5.0)], figures=FIGURES,
                    checks=_median_checks, settings={"knob": 1}, repeat=repeat,
                    out=tmp_path / "sub" / "bench.json", **kw)


def test_spread_is_median_range_and_count_of_what_is_there() -> None:
    assert spread([81.0, 95.0, 92.0]) == {"median": 92.0, "min": 81.0, "max": 95.0, "n": 3}
    assert spread([3.0, None, 1.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 2}
    assert spread([None]) == {"median": None, "min": None, "max": None, "n": 0}


def test_summary_has_one_row_per_case_in_the_order_run() -> None:
    results = [{"bench": {"case": c}, "speed": s} for c, s in
               (("b", 1.0), ("a", 4.0), ("b", 3.0), ("a", 2.0), ("b", 2.0))]
    rows = summarise(results, FIGURES)
    assert [(r["case"], r["runs"]) for r in rows] == [("b", 3), ("a", 2)]
    assert rows[0]["figures"]["speed"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert rows[1]["figures"]["late"]["n"] == 0


def test_every_case_runs_repeat_times_labelled_and_summarised(tmp_path: Path) -> None:
    said: list[str] = []
    bench = _bench(tmp_path, say=said.append)
    jitter = {0: 1.0, 1: -3.0, 2: 0.5}

    async def measure(case: FakeCase, index: int) -> dict[str, Any]:
        return {"speed": case.base + jitter[index]}

    doc = asyncio.run(bench.run(measure))
    assert bench.state is BenchState.DONE and "6/6 runs" in repr(bench)
    assert [r["bench"] for r in doc["results"]] == [
        {"case": c, "repeat": i, "base": b} for c, b in (("a", 10.0), ("b", 5.0)) for i in range(3)]
    assert doc["summary"][0]["figures"]["speed"] == {"median": 10.5, "min": 7.0, "max": 11.0,
                                                     "n": 3}
    # the checks read the medians: "a" is fast though one of its runs was not
    assert [(c["case"], c["ok"]) for c in doc["checks"]] == [("a", True), ("b", False)]
    assert doc["settings"] == {"knob": 1, "repeat": 3} and doc["kind"] == "fake"
    assert said[0] == "[1/6] a (run 1 of 3)" and said[-1] == "[6/6] b (run 3 of 3)"
    assert json.loads(bench.out.read_text()) == doc   # type: ignore[union-attr]


def test_the_document_is_rewritten_atomically_after_every_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[dict[str, Any]] = []
    real = runner.atomic_write

    def spy(path: Path, data: bytes, mode: int = 0o644) -> None:
        writes.append(json.loads(data))
        real(path, data, mode)

    monkeypatch.setattr(runner, "atomic_write", spy)
    bench = _bench(tmp_path, repeat=2)
    on_disk: list[int] = []

    async def measure(case: FakeCase, index: int) -> dict[str, Any]:
        # what a reader sees while this run is under way: every run before it
        on_disk.append(len(json.loads(bench.out.read_text())["results"]))  # type: ignore[union-attr]
        return {"speed": case.base}

    asyncio.run(bench.run(measure))
    assert on_disk == [0, 1, 2, 3]
    assert [len(w["results"]) for w in writes] == [0, 1, 2, 3, 4]
    assert writes[0]["summary"] == [] and writes[2]["summary"][0]["runs"] == 2


def test_a_stopped_bench_keeps_what_it_measured(tmp_path: Path) -> None:
    bench = _bench(tmp_path, repeat=2)

    async def measure(case: FakeCase, index: int) -> dict[str, Any]:
        if case.name == "b":
            raise asyncio.CancelledError    # ^C half-way
        return {"speed": case.base}

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(bench.run(measure))
    kept = json.loads(bench.out.read_text())  # type: ignore[union-attr]
    assert bench.state is BenchState.STOPPED
    assert [r["bench"]["case"] for r in kept["results"]] == ["a", "a"]
    assert kept["summary"][0]["runs"] == 2 and kept["checks"][0]["ok"] is True


def test_no_temporary_file_is_left_beside_the_document(tmp_path: Path) -> None:
    bench = _bench(tmp_path, repeat=1)
    asyncio.run(bench.run(lambda case, index: _value({"speed": 1.0})))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["bench.json"]


async def _value(v: dict[str, Any]) -> dict[str, Any]:
    return v


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_repeat_must_be_a_whole_number_of_runs(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^repeat: must be a whole number of runs"):
        check_repeat(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        _bench(tmp_path, repeat=bad)  # type: ignore[arg-type]
    assert check_repeat(2) == 2


def test_a_path_that_cannot_be_written_fails_before_anything_runs(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    bench = BenchRun("fake", [FakeCase("a", 1.0)], figures=FIGURES, checks=_median_checks,
                     settings={}, out=blocker / "bench.json")
    ran: list[str] = []

    async def measure(case: FakeCase, index: int) -> dict[str, Any]:
        ran.append(case.name)
        return {}

    with pytest.raises(ConfigError, match=r"^--json: cannot write"):
        asyncio.run(bench.run(measure))
    assert not ran and bench.state is BenchState.PLANNED


def test_a_write_that_fails_later_is_a_wanmig_error(tmp_path: Path) -> None:
    bench = _bench(tmp_path, repeat=1)
    bench.begin()

    async def measure(case: FakeCase, index: int) -> dict[str, Any]:
        (tmp_path / "sub" / "bench.json").unlink()
        (tmp_path / "sub").rmdir()
        (tmp_path / "sub").write_text("")   # the folder is now a file
        return {"speed": 1.0}

    with pytest.raises(WanmigError, match="cannot write") as caught:
        asyncio.run(bench.run(measure))
    assert not isinstance(caught.value, ConfigError)


def test_render_bench_picks_the_kind_and_refuses_others() -> None:
    doc = {"kind": "wan", "settings": {"repeat": 3}, "checks": [], "results": [
        {"profile": "x", "backend": "netem", "rtt_set_ms": 1.0, "goodput_mbit": g,
         "bench": {"case": "x", "repeat": i}} for i, g in enumerate((9.0, 8.0, 9.5))]}
    doc["summary"] = summarise(doc["results"], {"goodput_mbit": lambda e: e["goodput_mbit"]})
    render_bench(doc)
    with pytest.raises(ValueError, match="known kind"):
        render_bench({"kind": "disk"})


# ------------------------------------------------------------------------- CLI

BAD_OPTIONS = [
    (["wan", "--seconds", "-1"], "seconds: must be a positive number"),
    (["wan", "--seconds", "0"], "seconds: must be a positive number"),
    (["wan", "--repeat", "0"], "repeat: must be a whole number of runs"),
    (["wan", "--profile", "moon"], "unknown profile 'moon'"),
    (["memory", "--strategy", "fast"], "unknown memory strategy 'fast'"),
    (["memory", "--workload", "busy"], "unknown workload 'busy'"),
    (["memory", "--repeat", "0"], "repeat: must be a whole number of runs"),
    (["memory", "--wan", "moon"], "unknown profile 'moon'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_OPTIONS)
def test_bad_bench_options_exit_2_with_one_line(args: list[str], message: str,
                                                tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", *args, "--json", str(out)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("wanmig: "), lines
    assert not out.exists()     # refused before anything started


def test_bad_seconds_from_the_installed_command_is_one_line_on_stderr(tmp_path: Path) -> None:
    wanmig = Path(sys.executable).with_name("wanmig")
    done = subprocess.run([str(wanmig), "bench", "wan", "--json", str(tmp_path / "x.json"),
                           "--seconds", "-1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "wanmig: seconds: must be a positive number (got -1.0)"]


def test_an_interrupted_run_is_kept_and_ends_the_bench(tmp_path: Path) -> None:
    bench = _bench(tmp_path, repeat=2)
    ran: list[tuple[str, int]] = []

    async def measure(case: FakeCase, index: int) -> dict[str, Any]:
        ran.append((case.name, index))
        # the orchestrator rolled the second run back on SIGINT and said so in its record
        return {"speed": case.base, **({"interrupted": "SIGINT"} if index == 1 else {})}

    with pytest.raises(WanmigError, match=r"interrupted \(SIGINT\) after 2 runs"):
        asyncio.run(bench.run(measure))
    assert ran == [("a", 0), ("a", 1)] and bench.state is BenchState.STOPPED
    saved = json.loads((tmp_path / "sub" / "bench.json").read_text())
    assert [r["bench"]["repeat"] for r in saved["results"]] == [0, 1]
    assert saved["results"][-1]["interrupted"] == "SIGINT"
