"""The part of ``wanmig bench KIND`` that every kind shares: run a matrix, keep what it measured.

A kind (``memory``, ``wan``) brings its cases, a ``measure`` coroutine that
runs one case once and returns one result entry, the noisy figures of an
entry (``Figures``: name -> how to read it) and its targets (``Checks``, a
pure function of the summary).  ``BenchRun`` does the rest: every case
``repeat`` times in one sitting, each entry labelled, and after every run the
document rewritten whole (``atomic_write``), so a bench that is stopped keeps
what it measured and a reader never sees half a file::

    {"kind": KIND,
     "results":  [entry, ...],       one per run; entry["bench"] = {"case", "repeat", **labels}
     "summary":  [{"case", "runs", "figures": {name: {"median", "min", "max", "n"}}}, ...],
     "checks":   [{"check", "ok", "detail", ["case"]}, ...],   from the summary's medians
     "settings": {..., "repeat": N},
     "seconds":  wall time so far}

``n`` counts the runs that gave the figure (None is no figure).  With one run
the median is the figure itself, so the checks read the same either way.
Tables are drawn from this document alone (``wanmig.report.render_bench``).
"""

from __future__ import annotations

import enum
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ..errors import ConfigError, WanmigError
from ..fileio import atomic_write

Entry = dict[str, Any]
Figures = Mapping[str, Callable[[Entry], float | None]]
Checks = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
Say = Callable[[str], None]


def quiet(message: str) -> None:
    """A ``Say`` that says nothing."""


class BenchCase(Protocol):
    """What the runner needs of a case: a name unique in its matrix and labels for its entries."""

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> dict[str, Any]: ...


C = TypeVar("C", bound=BenchCase)


def check_repeat(repeat: int) -> int:
    """``repeat`` if it is a whole number of runs, at least one; ConfigError otherwise."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ConfigError(f"must be a whole number of runs, at least 1 (got {repeat!r})",
                          field="repeat")
    return repeat


def spread(values: Iterable[float | None]) -> dict[str, Any]:
    """Median, range and count of the values that are there (None is a missing figure)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0}
    # the mean of the middle two can have float noise in its last digits: not a figure
    return {"median": round(statistics.median(xs), 3), "min": min(xs), "max": max(xs),
            "n": len(xs)}


def summarise(results: Sequence[Entry], figures: Figures) -> list[dict[str, Any]]:
    """One row per case, in the order the cases ran: ``spread`` of each figure over its runs."""
    by_case: dict[str, list[Entry]] = {}
    for entry in results:
        by_case.setdefault(entry["bench"]["case"], []).append(entry)
    return [{"case": case, "runs": len(runs),
             "figures": {name: spread(get(r) for r in runs) for name, get in figures.items()}}
            for case, runs in by_case.items()]


def field_of(entry: Entry, *keys: str) -> Any:
    """``entry[k1][k2]...``, None where any level is missing."""
    value: Any = entry
    for key in keys:
        value = (value or {}).get(key)
    return value


#: The figures of a whole run that every side-by-side comparison reads (demo, seeds).
RUN_FIGURES: dict[str, Callable[[Entry], float | None]] = {
    "completed": lambda r: 1.0 if r.get("status") == "completed" else 0.0,
    "total_ms": lambda r: r.get("total_ms"),
    "memory_ms": lambda r: field_of(r, "memory", "total_ms"),
    "downtime_ms": lambda r: field_of(r, "memory", "downtime_ms"),
    "outage_ms": lambda r: field_of(r, "network", "client_outage_ms"),
    "wan_bytes": lambda r: r.get("wan_bytes"),
}


def medians(row: Mapping[str, Any]) -> dict[str, Any]:
    """A summary row's figures as their medians: what the checks read."""
    return {name: fig["median"] for name, fig in row["figures"].items()}


class BenchState(enum.Enum):
    PLANNED = "planned"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"     # failed or cancelled: the document holds the runs before


class BenchRun(Generic[C]):
    """One bench: its cases, each run ``repeat`` times, and the document it rewrites."""

    def __init__(self, kind: str, cases: Sequence[C], *, figures: Figures, checks: Checks,
                 settings: Mapping[str, Any], repeat: int = 1, out: Path | None = None,
                 say: Say | None = None) -> None:
        self.kind, self.cases = kind, list(cases)
        self.figures, self.checks = figures, checks
        self.repeat = check_repeat(repeat)
        self.out, self.say = out, say or quiet
        self.doc: dict[str, Any] = {"kind": kind, "results": [], "summary": [], "checks": [],
                                    "settings": {**settings, "repeat": repeat}, "seconds": 0.0}
        self.state = BenchState.PLANNED
        self._started = time.monotonic()

    def __repr__(self) -> str:
        return (f"BenchRun({self.kind}, {len(self.doc['results'])}/{self.total} runs, "
                f"state={self.state.value}, out={self.out})")

    @property
    def total(self) -> int:
        return len(self.cases) * self.repeat

    def begin(self) -> None:
        """Write the empty document: a path that cannot be written fails before anything runs."""
        if self.state is not BenchState.PLANNED:
            return
        self._started = time.monotonic()
        self._write()
        self.state = BenchState.RUNNING

    def note_settings(self, **values: Any) -> None:
        """Add to the document's settings (what was measured before the first run, say)
        and rewrite it."""
        self.doc["settings"].update(values)
        if self.state is not BenchState.PLANNED:
            self._write()

    async def run(self, measure: Callable[[C, int], Awaitable[Entry]]) -> dict[str, Any]:
        """Every case ``repeat`` times, in order; the document after the last run."""
        self.begin()
        try:
            for case in self.cases:
                for repeat in range(self.repeat):
                    self.say(f"[{len(self.doc['results']) + 1}/{self.total}] {case.name}"
                             + (f" (run {repeat + 1} of {self.repeat})" if self.repeat > 1
                                else ""))
                    self.add(case, repeat, await measure(case, repeat))
                    if signame := self.doc["results"][-1].get("interrupted"):
                        # the run rolled back and kept its record; the bench ends with it
                        raise WanmigError(f"{self.kind} bench interrupted ({signame}) after "
                                          f"{len(self.doc['results'])} runs; kept in "
                                          f"{self.out}")
        except BaseException:
            self.state = BenchState.STOPPED
            raise
        self.state = BenchState.DONE
        return self.doc

    def add(self, case: C, repeat: int, entry: Entry) -> None:
        """Label one run's entry, fold it into the summary and checks, rewrite the document."""
        entry["bench"] = {"case": case.name, "repeat": repeat, **case.labels}
        results = self.doc["results"]
        results.append(entry)
        self.doc["summary"] = summarise(results, self.figures)
        self.doc["checks"] = self.checks(self.doc["summary"])
        self.doc["seconds"] = round(time.monotonic() - self._started, 1)
        self._write()

    def _write(self) -> None:
        if self.out is None:
            return
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out, (json.dumps(self.doc, indent=2) + "\n").encode())
        except OSError as exc:
            message = f"cannot write {self.out}: {exc.strerror or exc}"
            if self.state is BenchState.PLANNED:
                raise ConfigError(message, field="--json") from exc
            raise WanmigError(message, cause=exc) from exc
