"""``wanmig demo``: one guest over one WAN moved twice, QEMU's defaults and then ``auto``.

The two runs are the same scenario (the demo's, with the command line's options)
but for the strategies: ``defaults`` is QEMU's default precopy and, where the disk
moves, libvirt's ``mirror`` (``--copy-storage-all``); ``auto`` is wanmig's memory
``auto`` and, where the disk moves, storage ``auto`` (or the strategy asked for).
Each is a full migration by the orchestrator on a fresh testbed, so each result is
an ordinary result record; the runner (``bench.runner``) keeps both in one document
of kind ``demo``, from which the comparison table and the HTML report are built.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bench.runner import RUN_FIGURES, BenchRun, Entry, Figures, Say
from .config import Scenario, parse_scenario

if TYPE_CHECKING:
    from .orchestrator import Ui

DEFAULTS, AUTO = "defaults", "auto"
#: The storage strategy of the defaults run where the disk moves: libvirt's.
DEFAULT_STORAGE = "mirror"


@dataclass(frozen=True)
class DemoCase:
    name: str
    memory: str
    storage: str | None   # None: the scenario's own (shared storage)

    @property
    def labels(self) -> dict[str, Any]:
        return {"memory": self.memory, "storage": self.storage or "shared"}

    def scenario(self, base: dict[str, Any]) -> dict[str, Any]:
        out = {**base, "name": f"demo-{self.name}",
               "memory": {**base.get("memory", {}), "strategy": self.memory}}
        if self.storage is not None:
            out["storage"] = {**base.get("storage", {}), "strategy": self.storage}
        return out


def plan_cases(base: dict[str, Any]) -> list[DemoCase]:
    """The two runs for ``base`` (the scenario's data): the disk moves in both or in
    neither, as ``base`` asks."""
    storage = (base.get("storage") or {}).get("strategy")
    moves_disk = storage not in (None, "shared")
    return [DemoCase(DEFAULTS, "precopy", DEFAULT_STORAGE if moves_disk else None),
            DemoCase(AUTO, "auto", storage if moves_disk else None)]


FIGURES: Figures = RUN_FIGURES


def comparison(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Not targets: what auto changed against the defaults, one line per figure (``ok``
    None: a comparison, not a check)."""
    by = {row["case"]: {k: f["median"] for k, f in row["figures"].items()} for row in summary}
    base, auto = by.get(DEFAULTS), by.get(AUTO)
    if base is None or auto is None:
        return []
    out = []
    for name, label, unit, scale in (("total_ms", "total time", "s", 1000),
                                     ("memory_ms", "memory copy", "s", 1000),
                                     ("outage_ms", "client outage", "ms", 1),
                                     ("wan_bytes", "bytes on the WAN", "MB", 1e6)):
        b, a = base.get(name), auto.get(name)
        if b and a is not None:
            out.append({"check": f"auto's {label} against QEMU's defaults", "ok": None,
                        "detail": f"{a / b:.2f}× ({a / scale:.2f} {unit} vs "
                                  f"{b / scale:.2f} {unit})"})
    return out


def _settings(sc: Scenario) -> dict[str, Any]:
    """What both runs share, for the document's ``settings``."""
    return {"wan": sc.wan.profile, "client_wan": sc.wan.client_profile,
            "ram_mib": sc.vm.ram_mib, "workload": sc.vm.workload,
            "network": sc.network.mode, "tls": sc.memory.tls}


async def run_demo(base: dict[str, Any], *, out: Path | None = None,
                   build_dir: Path | None = None, ui: Ui | None = None,
                   say: Say | None = None) -> dict[str, Any]:
    """Both runs, in order; the runner's document, kind ``demo``.  Both scenarios are
    checked before the first run starts (ConfigError)."""
    from .orchestrator import Orchestrator   # the engine, only once a run is asked for

    cases = plan_cases(base)
    scenarios = {c.name: parse_scenario(c.scenario(base)) for c in cases}
    demo = BenchRun("demo", cases, figures=FIGURES, checks=comparison,
                    settings=_settings(scenarios[DEFAULTS]),
                    out=out, say=say)

    async def migrate(case: DemoCase, index: int) -> Entry:
        record = await Orchestrator(scenarios[case.name], build_dir=build_dir, ui=ui).run()
        return json.loads(record.model_dump_json())

    return await demo.run(migrate)
