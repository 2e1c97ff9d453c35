"""The ``wanmig`` command line (typer).  The only place that calls asyncio.run().

Errors from the engine arrive as ``WanmigError`` and are printed as one line;
configuration errors exit with code 2 before anything has been started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from .config import Scenario, load_scenario, parse_scenario
from .errors import ConfigError, WanmigError
from .memory import MigrationProgress
from .orchestrator import Orchestrator
from .qemu.image import build_image
from .record import ResultRecord
from .registry import clean_leftovers
from .memory.bench import run_memory_bench
from .report import render_memory_bench, render_record, render_wan_bench
from .wan.bench import run_wan_bench

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Live-migrate a running QEMU VM between two sites and measure what a client saw.")
image_app = typer.Typer(no_args_is_help=True, help="The guest image.")
app.add_typer(image_app, name="image")
bench_app = typer.Typer(no_args_is_help=True,
                        help="Benchmarks: a whole matrix in one run, written as JSON.")
app.add_typer(bench_app, name="bench")
console = Console()
err_console = Console(stderr=True)


class RichUi:
    """Shows steps, phases and a live migration progress bar."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: int | None = None

    def step(self, message: str) -> None:
        self._close()
        console.print(f"[dim]•[/] {message}")

    def phase(self, name: str) -> None:
        self._close()
        console.print(f"[bold cyan]▶ {name}[/]")

    def progress(self, p: MigrationProgress) -> None:
        if self._progress is None:
            self._progress = Progress(TextColumn("  memory {task.fields[status]} "
                                                 "round {task.fields[rounds]}"),
                                      BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                      console=console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task("memory", total=max(p.total, 1),
                                                 status=p.status, rounds=p.rounds)
        assert self._task is not None
        self._progress.update(self._task, completed=max(p.total - p.remaining, 0),
                              total=max(p.total, 1), status=p.status, rounds=p.rounds)

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _fail(exc: WanmigError) -> typer.Exit:
    err_console.print(f"[red]wanmig: {escape(str(exc))}[/]", soft_wrap=True, highlight=False)
    return typer.Exit(exc.exit_code)


def _run_scenario(scenario: Scenario, out: Optional[Path]) -> None:
    record = asyncio.run(Orchestrator(scenario, ui=RichUi()).run())
    path = out or Path("results") / f"{scenario.name}-{record.run_id}.json"
    record.write(path)
    console.print(render_record(record))
    console.print(f"[dim]result record: {path}[/]")
    if record.status != "completed":
        raise typer.Exit(1)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # qemu.qmp logs every QMP message at DEBUG; wanmig's own debug lines are enough.
    logging.getLogger("qemu.qmp").setLevel(logging.INFO if verbose else logging.WARNING)


JsonOption = Annotated[Optional[Path], typer.Option("--json", help="Write the result record here.")]
WanOption = Annotated[Optional[str], typer.Option(
    "--wan", help="WAN profile between the sites: lan, metro, continental, intercontinental, "
                  "lossy, or none (a plain veth).")]


StrategyOption = Annotated[Optional[str], typer.Option(
    "--strategy", help="Memory strategy: precopy (QEMU's defaults), precopy-tuned, postcopy, "
                       "hybrid, or auto (measure, predict, choose).")]
WorkloadOption = Annotated[Optional[str], typer.Option(
    "--workload", help="Guest workload: idle, web or dirty.")]
InsecureOption = Annotated[bool, typer.Option(
    "--insecure", help="Migrate without TLS (to measure what TLS costs).")]


def _overrides(wan: str | None, strategy: str | None, workload: str | None,
               insecure: bool) -> dict[str, dict[str, Any]]:
    """The CLI's options as scenario values; they win over the scenario file."""
    out: dict[str, dict[str, Any]] = {}
    if wan is not None:
        out["wan"] = {"profile": wan}
    if strategy is not None:
        out.setdefault("memory", {})["strategy"] = strategy
    if insecure:
        out.setdefault("memory", {})["tls"] = False
    if workload is not None:
        out["vm"] = {"workload": workload}
    return out


@app.command()
def demo(out: JsonOption = None, wan: WanOption = None, strategy: StrategyOption = None,
         workload: WorkloadOption = None, insecure: InsecureOption = False) -> None:
    """Migrate a running guest from site A to site B while a client watches."""
    try:
        data: dict[str, Any] = {"name": "demo",
                                **_overrides(wan, strategy, workload, insecure)}
        _run_scenario(parse_scenario(data), out)
    except WanmigError as exc:
        raise _fail(exc) from None


@app.command()
def migrate(
    scenario: Annotated[Path, typer.Option("--scenario", "-s", help="Scenario TOML file.")],
    out: JsonOption = None,
    wan: WanOption = None,
    strategy: StrategyOption = None,
    workload: WorkloadOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Run the migration a scenario file describes."""
    try:
        _run_scenario(load_scenario(
            scenario, overrides=_overrides(wan, strategy, workload, insecure)), out)
    except WanmigError as exc:
        raise _fail(exc) from None


@bench_app.command("wan")
def bench_wan(
    out: Annotated[Path, typer.Option("--json", help="Write the results here.")],
    profile: Annotated[Optional[list[str]], typer.Option(
        "--profile", help="Only these profiles (repeatable); default: all, plus rate points.")] = None,
    seconds: Annotated[Optional[float], typer.Option(
        "--seconds", help="Length of each measurement (shorter = noisier).")] = None,
) -> None:
    """Measure the emulated WAN: RTT idle/loaded/saturated, goodput, loss, forwarder CPU."""
    try:
        kwargs = {"seconds": seconds} if seconds else {}
        result = asyncio.run(run_wan_bench(profile or None, on_progress=lambda m: console.print(
            f"[dim]•[/] {escape(m)}"), **kwargs))
    except WanmigError as exc:
        raise _fail(exc) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(render_wan_bench(result), width=max(console.width, 150))
    console.print(f"[dim]results: {out}[/]")


@bench_app.command("memory")
def bench_memory(
    out: Annotated[Path, typer.Option("--json", help="Write the results here.")],
    strategy: Annotated[Optional[list[str]], typer.Option(
        "--strategy", help="Only these strategies (repeatable); default: all five.")] = None,
    workload: Annotated[Optional[list[str]], typer.Option(
        "--workload", help="Only these workloads (repeatable): idle, web, dirty-5, dirty-20, "
                           "dirty-50; default: all.")] = None,
    wan: Annotated[str, typer.Option("--wan", help="WAN profile.")] = "continental",
) -> None:
    """Every memory strategy × workload on one WAN, each a full migration (about 30 min)."""
    try:
        result = asyncio.run(run_memory_bench(
            out, strategies=strategy or None, workloads=workload or None, profile=wan,
            ui=RichUi(), say=lambda m: console.print(f"[bold]{escape(m)}[/]")))
    except ValueError as exc:
        raise _fail(ConfigError(str(exc))) from None
    except WanmigError as exc:
        raise _fail(exc) from None
    console.print(render_memory_bench(result), width=max(console.width, 150))
    console.print(f"[dim]results: {out}[/]")


@app.command()
def report(path: Annotated[Path, typer.Argument(help="A result record (JSON).")]) -> None:
    """Print a readable summary of a result record."""
    try:
        record = ResultRecord.read(path)
    except FileNotFoundError:
        raise _fail(ConfigError(f"no such file: {path}")) from None
    except ValueError as exc:
        raise _fail(ConfigError(f"{path} is not a result record: "
                                f"{str(exc).splitlines()[0]}")) from None
    console.print(render_record(record))


@image_app.command("build")
def image_build(force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached.")] = False) -> None:
    """Build (or reuse) the guest kernel + initramfs."""
    try:
        image = build_image(force=force, log=lambda line: console.print(f"[dim]{line}[/]"))
    except WanmigError as exc:
        raise _fail(exc) from None
    console.print(f"guest image: {image.kernel} {image.initrd} (kernel {image.kernel_version})")


@app.command()
def clean(force: Annotated[bool, typer.Option("--force", help="Also runs whose owner still lives.")] = False) -> None:
    """Remove namespaces, processes and files left by crashed runs."""
    removed = clean_leftovers(force=force)
    for line in removed:
        console.print(f"removed {line}")
    if not removed:
        console.print("nothing to clean")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
