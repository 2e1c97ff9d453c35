"""The ``wanmig`` command line (typer).  The only place that calls asyncio.run().

Errors from the engine arrive as ``WanmigError`` and are printed as one line;
configuration errors exit with code 2 before anything has been started.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.errors import ConsoleError
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from .bench import faults as faults_bench
from .bench import floor as floor_bench
from .bench import memory as memory_bench
from .bench import network as network_bench
from .bench import seeds as seeds_bench
from .bench import storage as storage_bench
from .bench import tunnel as tunnel_bench
from .bench import wan as wan_bench
from .budget import POLL_S, write_rate
from .config import Scenario, load_scenario, parse_scenario
from .demo import run_demo
from .errors import ConfigError, WanmigError
from .fileio import atomic_write
from .memory import MigrationProgress
from .orchestrator import Orchestrator
from .parts import MEMORY, NETWORK, STORAGE
from .wan.profiles import PROFILES
from .qemu.image import build_image
from .record import ResultRecord
from .recover import recover as recover_run
from .registry import Registry, clean_leftovers
from .report import render_bench, render_record
from .report.html import write_html

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


def _wide() -> Console:
    """A console for the bench tables: at least 160 columns, also into a pipe or a log
    (rich would squeeze a dozen columns into 80 and cut every name)."""
    return Console(width=max(console.width, 160))


def _fail(exc: WanmigError) -> typer.Exit:
    err_console.print(f"[red]wanmig: {escape(str(exc))}[/]", soft_wrap=True, highlight=False)
    return typer.Exit(exc.exit_code)


#: Where a run's record goes without ``--json``: ``results/<scenario name>-<run id>.json``.
RESULTS_DIR = Path("results")


def _record_dir(out: Optional[Path]) -> Path:
    """The directory the record will go to, created now: no run is started only to
    find at its end that its record has nowhere to go."""
    directory = out.parent if out is not None else RESULTS_DIR
    field = "--json" if out is not None else None
    if out is not None and out.is_dir():
        raise ConfigError(f"{out} is a directory", field=field)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{directory} is not a directory", field=field) from None
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror or exc}",
                          field=field) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {directory}", field=field)
    return directory


def _run_scenario(scenario: Scenario, out: Optional[Path]) -> None:
    directory = _record_dir(out)
    record = asyncio.run(Orchestrator(scenario, ui=RichUi()).run())
    # the name is a plain file-name component (config.Scenario), so this stays in directory
    path = out or directory / f"{scenario.name}-{record.run_id}.json"
    console.print(render_record(record))
    try:
        record.write(path)
    except OSError as exc:
        raise WanmigError(f"cannot write the result record {path}: {exc.strerror or exc}",
                          cause=exc) from exc
    console.print(f"[dim]result record: {path}[/]")
    if record.status != "completed":
        raise typer.Exit(1)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # qemu.qmp logs every QMP message at DEBUG, and a dropped connection as
    # ERROR lines of its own; wanmig reports what such a failure means (one
    # QemuError line), so without --verbose only qemu.qmp's CRITICAL (a bug in
    # the library) is shown.
    logging.getLogger("qemu.qmp").setLevel(logging.INFO if verbose else logging.CRITICAL)


JsonOption = Annotated[Optional[Path], typer.Option("--json", help="Write the result record here.")]
WanOption = Annotated[Optional[str], typer.Option(
    "--wan", help=f"WAN profile between the sites: {', '.join(PROFILES)}, "
                  "or none (a plain veth).")]


StrategyOption = Annotated[Optional[str], typer.Option(
    "--strategy", help=f"Memory strategy: {MEMORY.help()}.")]
WorkloadOption = Annotated[Optional[str], typer.Option(
    "--workload", help="Guest workload: idle, web or dirty.")]
InsecureOption = Annotated[bool, typer.Option(
    "--insecure", help="Migrate without TLS and with plain VXLAN tunnels (to measure what "
                       "encryption costs).")]
StorageOption = Annotated[Optional[str], typer.Option(
    "--storage", help=f"Storage strategy: {STORAGE.help()}.")]
NetworkOption = Annotated[Optional[str], typer.Option(
    "--network", help=f"Network mode: {NETWORK.help()}.")]
TransportOption = Annotated[Optional[str], typer.Option(
    "--transport", help="What carries a frozen disk image (hybrid's bulk, the postcopy/"
                        "hybrid fetch): wancopy (zstd, dedup, TLS streams), qemu (NBD) or auto "
                        "(wancopy for postcopy and hybrid, the default).")]


def _overrides(wan: str | None, strategy: str | None, workload: str | None,
               insecure: bool, storage: str | None = None,
               transport: str | None = None,
               network: str | None = None) -> dict[str, dict[str, Any]]:
    """The CLI's options as scenario values; they win over the scenario file."""
    out: dict[str, dict[str, Any]] = {}
    if wan is not None:
        out["wan"] = {"profile": wan}
    if strategy is not None:
        out.setdefault("memory", {})["strategy"] = strategy
    if storage is not None:
        out["storage"] = {"strategy": storage}
    if transport is not None:
        out.setdefault("storage", {})["transport"] = transport
    if workload is not None:
        out["vm"] = {"workload": workload}
    if network is not None:
        out["network"] = {"mode": network}
    if insecure:
        out.setdefault("memory", {})["tls"] = False
        out.setdefault("network", {})["encrypt"] = False
    return out


@app.command()
def demo(out: Annotated[Optional[Path], typer.Option(
            "--json", help="Write the demo's document here (both runs' records; with "
                           "--strategy, the one record).")] = None,
         wan: WanOption = None, strategy: StrategyOption = None,
         workload: WorkloadOption = None, insecure: InsecureOption = False,
         storage: StorageOption = None, transport: TransportOption = None,
         network: NetworkOption = None) -> None:
    """Migrate a running guest from site A to site B while a client watches: twice, with
    QEMU's defaults and with wanmig's auto, side by side (with --strategy: once)."""
    try:
        data: dict[str, Any] = {"name": "demo", **_overrides(wan, strategy, workload, insecure,
                                                             storage, transport, network)}
        if strategy is not None:
            _run_scenario(parse_scenario(data), out)
            return
        _compare(data, out or RESULTS_DIR / "demo.json")
    except WanmigError as exc:
        raise _fail(exc) from None


def _compare(data: dict[str, Any], out: Path) -> None:
    """The demo's two runs; the comparison printed, the document and its HTML written."""
    _record_dir(out)
    doc = asyncio.run(run_demo(data, out=out, ui=RichUi(),
                               say=lambda m: console.print(f"[bold]{escape(m)}[/]")))
    for entry in doc["results"]:
        console.print(render_record(ResultRecord.model_validate(entry)))
    html = out.with_suffix(".html")
    _write_html(doc, html)
    _wide().print(render_bench(doc))
    console.print(f"[dim]results: {out}[/]")
    console.print(f"[bold]HTML report: {html}[/]", soft_wrap=True)
    if any(entry.get("status") != "completed" for entry in doc["results"]):
        raise typer.Exit(1)


@app.command()
def migrate(
    scenario: Annotated[Path, typer.Option("--scenario", "-s", help="Scenario TOML file.")],
    out: JsonOption = None,
    wan: WanOption = None,
    strategy: StrategyOption = None,
    workload: WorkloadOption = None,
    insecure: InsecureOption = False,
    storage: StorageOption = None,
    transport: TransportOption = None,
    network: NetworkOption = None,
) -> None:
    """Run the migration a scenario file describes."""
    try:
        _run_scenario(load_scenario(scenario, overrides=_overrides(
            wan, strategy, workload, insecure, storage, transport, network)), out)
    except WanmigError as exc:
        raise _fail(exc) from None


def _bench(run: Coroutine[Any, Any, dict[str, Any]], out: Path) -> None:
    """Run one bench (it checks its options before it starts) and print its table."""
    try:
        result = asyncio.run(run)
    except WanmigError as exc:
        raise _fail(exc) from None
    _wide().print(render_bench(result))
    console.print(f"[dim]results: {out}[/]")


BenchJsonOption = Annotated[Path, typer.Option(
    "--json", help="Write the results here (rewritten after every run).")]


RepeatOption = Annotated[int, typer.Option(
    "--repeat", help="Run each case N times in one sitting (median and range of the noisy "
                     "figures).")]


@bench_app.command("wan")
def bench_wan(
    out: BenchJsonOption,
    profile: Annotated[Optional[list[str]], typer.Option(
        "--profile", help="Only these profiles (repeatable); default: all, plus rate points.")] = None,
    seconds: Annotated[float, typer.Option(
        "--seconds", help="Length of each measurement (shorter = noisier).")] = wan_bench.DEFAULT_SECONDS,
    repeat: RepeatOption = wan_bench.DEFAULT_REPEAT,
) -> None:
    """Measure the emulated WAN: RTT idle/loaded/saturated, goodput, loss, forwarder CPU."""
    _bench(wan_bench.run_wan_bench(profile or None, seconds=seconds, repeat=repeat, out=out,
                                   say=lambda m: console.print(f"[dim]•[/] {escape(m)}")), out)


@bench_app.command("tunnel")
def bench_tunnel(
    out: BenchJsonOption,
    seconds: Annotated[float, typer.Option(
        "--seconds", help="Length of each TCP stream after its warm-up.")] = tunnel_bench.DEFAULT_SECONDS,
    repeat: RepeatOption = tunnel_bench.DEFAULT_REPEAT,
    wan: Annotated[str, typer.Option("--wan", help="WAN profile.")] = "continental",
) -> None:
    """What encrypting the stretched segment costs: client goodput through OpenVPN and
    through VXLAN, in turns (about 3 min with the defaults)."""
    _bench(tunnel_bench.run_tunnel_bench(repeat=repeat, seconds=seconds, profile=wan, out=out,
                                         say=lambda m: console.print(f"[dim]•[/] {escape(m)}")),
           out)


@bench_app.command("memory")
def bench_memory(
    out: BenchJsonOption,
    strategy: Annotated[Optional[list[str]], typer.Option(
        "--strategy", help=f"Only these strategies (repeatable): {MEMORY.help()}; "
                           "default: every implemented one.")] = None,
    workload: Annotated[Optional[list[str]], typer.Option(
        "--workload", help=f"Only these workloads (repeatable): "
                           f"{', '.join(memory_bench.WORKLOADS)}; default: all.")] = None,
    wan: Annotated[str, typer.Option("--wan", help="WAN profile.")] = memory_bench.PROFILE,
    repeat: RepeatOption = memory_bench.DEFAULT_REPEAT,
    floor_cycles: Annotated[int, typer.Option(
        "--floor-cycles", help="Stop/cont cycles of the TCG floor's calibration before the "
                               "first run (0: none; the outage targets then read the raw "
                               "outage).")] = memory_bench.FLOOR_CYCLES,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="Seconds of iteration before a run that does not converge is "
                          "rolled back (auto plans within half of it).")] =
        memory_bench.TIMEOUT_S,
) -> None:
    """Every memory strategy × workload on one WAN, each a full migration (about 30 min a repeat)."""
    _bench(memory_bench.run_memory_bench(
        strategies=strategy or None, workloads=workload or None, profile=wan, repeat=repeat,
        floor_cycles=floor_cycles, timeout_s=timeout, out=out, ui=RichUi(),
        say=lambda m: console.print(f"[bold]{escape(m)}[/]")), out)


@bench_app.command("network")
def bench_network(
    out: BenchJsonOption,
    mode: Annotated[Optional[list[str]], typer.Option(
        "--mode", help=f"Only these modes (repeatable): {NETWORK.help()}; "
                       "default: every implemented one.")] = None,
    wan: Annotated[str, typer.Option(
        "--wan", help="WAN profile, between the sites and from the client's site to "
                      "each.")] = network_bench.PROFILE,
    repeat: RepeatOption = network_bench.DEFAULT_REPEAT,
) -> None:
    """Every network mode on one guest and one WAN, precopy-tuned memory (a minute or two
    a mode)."""
    _bench(network_bench.run_network_bench(
        modes=mode or None, profile=wan, repeat=repeat, out=out, ui=RichUi(),
        say=lambda m: console.print(f"[bold]{escape(m)}[/]")), out)


@bench_app.command("seeds")
def bench_seeds(
    out: BenchJsonOption,
    paper: Annotated[Optional[list[str]], typer.Option(
        "--paper", help=f"Only these papers (repeatable): "
                        f"{', '.join(p.key for p in seeds_bench.PAPERS if p.implemented)}; "
                        "default: every one wanmig has the technique of.")] = None,
    repeat: RepeatOption = seeds_bench.DEFAULT_REPEAT,
) -> None:
    """The seed papers' experiments on this testbed: each with the paper's technique and
    with wanmig's best, beside the paper's figure (about 15 min a repeat)."""
    _bench(seeds_bench.run_seeds_bench(
        papers=paper or None, repeat=repeat, out=out, ui=RichUi(),
        say=lambda m: console.print(f"[bold]{escape(m)}[/]")), out)


@bench_app.command("faults")
def bench_faults(
    out: BenchJsonOption,
    case: Annotated[Optional[list[str]], typer.Option(
        "--case", help="Only the cases whose name starts with this (repeatable): link/, "
                       "link/postcopy, kill-destination/, ...; default: the whole "
                       "campaign.")] = None,
) -> None:
    """The fault campaign: WAN outages of 2, 10 and 30 s in every phase and strategy, the
    destination killed at every point; one run each (about 40 min)."""
    _bench(faults_bench.run_faults_bench(
        cases=case or None, out=out, ui=RichUi(),
        say=lambda m: console.print(f"[bold]{escape(m)}[/]")), out)


@bench_app.command("storage")
def bench_storage(
    out: BenchJsonOption,
    strategy: Annotated[Optional[list[str]], typer.Option(
        "--strategy", help=f"Only these cases (repeatable): "
                           f"{', '.join(storage_bench.STRATEGIES)}; default: all.")] = None,
    workload: Annotated[Optional[list[str]], typer.Option(
        "--workload", help=f"Only these workloads (repeatable): "
                           f"{', '.join(storage_bench.WORKLOADS)}; default: all.")] = None,
    wan: Annotated[str, typer.Option("--wan", help="WAN profile.")] = storage_bench.PROFILE,
    repeat: RepeatOption = storage_bench.DEFAULT_REPEAT,
) -> None:
    """Every storage strategy on a 2 GiB Debian disk over one WAN (a few minutes a repeat)."""
    _bench(storage_bench.run_storage_bench(
        strategies=strategy or None, workloads=workload or None, profile=wan, repeat=repeat,
        out=out, ui=RichUi(), say=lambda m: console.print(f"[bold]{escape(m)}[/]")), out)


@bench_app.command("floor")
def bench_floor(
    out: BenchJsonOption,
    cycles: Annotated[int, typer.Option(
        "--cycles", help="Stop/cont cycles.")] = floor_bench.DEFAULT_CYCLES,
    pause_ms: Annotated[float, typer.Option(
        "--pause-ms", help="How long each cycle holds the guest paused.")] =
        floor_bench.DEFAULT_PAUSE_MS,
    wan: Annotated[str, typer.Option("--wan", help="WAN profile.")] = floor_bench.PROFILE,
) -> None:
    """The TCG floor: a guest paused and resumed at one site while the client's probes run
    (about a minute); the client's echo gap less the time paused."""
    _bench(floor_bench.run_floor_bench(
        out=out, cycles=cycles, pause_ms=pause_ms, profile=wan, ui=RichUi(),
        say=lambda m: console.print(f"[bold]{escape(m)}[/]")), out)


#: What a document whose fields are not what they should be raises while it is read or
#: drawn (the figures of a bench are read as it prints).
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, IndexError, ConsoleError)


def _read_saved(path: Path) -> dict[str, Any]:
    """A saved result record or bench document, checked as what it says it is;
    ConfigError (one line) for a file that is missing or is neither."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} is neither a result record nor a bench document")
    try:
        if "kind" in doc:   # drawn once into nothing: a table is built only as it prints
            Console(file=io.StringIO(), width=200).print(render_bench(doc))
        else:
            ResultRecord.model_validate(doc)
    except UNREADABLE as exc:
        what = "bench document" if "kind" in doc else "result record"
        raise ConfigError(f"{path} is not a {what}: {str(exc).splitlines()[0]}") from None
    return doc


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="A result record or a bench document (JSON).")],
    html: Annotated[Optional[Path], typer.Option(
        "--html", help="Also write a self-contained HTML report here (plots embedded).")] = None,
) -> None:
    """Print a readable summary of a result record or a bench document (and, with --html,
    write it as one HTML file with plots)."""
    try:
        doc = _read_saved(path)
        if html is not None:
            _write_html(doc, html)
    except WanmigError as exc:
        raise _fail(exc) from None
    if "kind" in doc:
        _wide().print(render_bench(doc))
    else:
        console.print(render_record(ResultRecord.model_validate(doc)))
    if html is not None:
        console.print(f"[dim]HTML report: {html}[/]", soft_wrap=True)


def _write_html(doc: dict[str, Any], out: Path) -> None:
    try:
        write_html(doc, out)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}", field="--html") from exc
    except UNREADABLE as exc:   # a document whose figures do not add up
        raise ConfigError(f"cannot draw the report of this document "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                          field="--html") from exc


@image_app.command("build")
def image_build(force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached.")] = False) -> None:
    """Build (or reuse) the guest kernel + initramfs."""
    try:
        image = build_image(force=force, log=lambda line: console.print(f"[dim]{line}[/]"))
    except WanmigError as exc:
        raise _fail(exc) from None
    console.print(f"guest image: {image.kernel} {image.initrd} (kernel {image.kernel_version})")


@app.command()
def budget(
    run: Annotated[str, typer.Argument(help="The run's id (its record's run_id, shown as "
                                            "'run ID' when it starts).")],
    mbit: Annotated[float, typer.Argument(help="The migration's new rate, Mbit/s.")],
) -> None:
    """Change a running migration's bandwidth budget (memory and disk together)."""
    try:
        if not re.fullmatch(r"[0-9a-f]{1,32}", run):
            raise ConfigError(f"not a run id: {run!r}", field="run")
        path = write_rate(Registry(run).run_dir, mbit)
    except WanmigError as exc:
        raise _fail(exc) from None
    console.print(f"budget of run {run}: {mbit:g} Mbit/s ({path}; applied within "
                  f"{POLL_S:g} s)")


@app.command()
def recover(
    run: Annotated[str, typer.Argument(help="The run's id ('wanmig clean' names it; the "
                                            "controller printed it when it started).")],
    out: Annotated[Optional[Path], typer.Option(
        "--json", help="Also write what was found and done here.")] = None,
) -> None:
    """End a run whose controller died: roll back to A if B never ran, else finish at B.

    The source is resumed only if the destination never received cont (it is fenced
    first); otherwise the source is never resumed.  Exit 0 when the VM runs at one site,
    1 when it is lost.  'wanmig clean' removes the run afterwards."""
    try:
        if not re.fullmatch(r"[0-9a-f]{1,32}", run):
            raise ConfigError(f"not a run id: {run!r}", field="run")
        result = asyncio.run(recover_run(run))
    except WanmigError as exc:
        raise _fail(exc) from None
    for step in result.steps:
        console.print(f"  {escape(step)}")
    console.print(f"run {run} (was {result.stage}): {result.status}"
                  + (" (VM lost)" if result.vm_lost else "")
                  + f"; source {result.source}, destination {result.destination}, "
                    f"{result.took_ms / 1000:.1f} s")
    if out is not None:
        atomic_write(out, (json.dumps(result.to_json(), indent=2) + "\n").encode())
    if result.vm_lost or result.status == "failed":
        raise typer.Exit(1)


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
