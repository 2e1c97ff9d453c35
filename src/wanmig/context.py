"""What the parts of a migration see, and the hooks they offer the engine.

A run is put together from a memory strategy, a storage strategy and a
network mode (the tables in ``wanmig.parts``).  Each is a ``Part``: a small
object with the phase hooks it needs.  The engine (``orchestrator.py``) calls
them in this order and knows nothing of what they do inside::

    phase        memory                 storage             network
    prepare      prepare                prepare             prepare
    storage      -                      copy                -
    memory       copy (until paused)    -                   -
    switchover   switchover (after) ─── switchover ──────── switchover   (concurrently;
                                                                          storage's first)
                 -                      before_run          -
                 (then the engine sends the destination ``cont``)
    redirect     -                      -                   redirect
    finish       finish                 finish              finish
    on failure   rollback               rollback            rollback     (only if the rule allows)

A hook gets the ``RunContext``: the scenario, the sites, both QEMUs, the
link as measured, the UI and the run state.  ``rollback`` is only called
when ``RunState.may_resume_source()`` holds; ``record`` returns the part's
block of the result record, and is called whatever happened (also when the
run failed before any hook ran).
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .qemu.process import VmConfig
from .record import Phase
from .storage.disk import has_backing, image_format

if TYPE_CHECKING:
    from .budget import Budget
    from .config import Scenario
    from .faults import Faults
    from .memory.migration import MigrationProgress
    from .memory.select import LinkFacts
    from .qemu.image import GuestImage
    from .qemu.process import QemuVm
    from .registry import Registry
    from .runstate import RunState
    from .testbed import Testbed


class Ui(Protocol):
    """What the engine tells the person watching (the CLI renders it with rich)."""

    def step(self, message: str) -> None: ...
    def phase(self, name: str) -> None: ...
    def progress(self, p: MigrationProgress) -> None: ...


@dataclass
class PhaseClock:
    """Phase bookkeeping, in ms since the start of ``prepare``."""

    t0: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    current: tuple[str, float] | None = None

    def now_ms(self) -> float:
        return (time.monotonic() - self.t0) * 1000.0

    def begin(self, name: str) -> None:
        self.end()
        if not self.phases and self.current is None:
            self.t0 = time.monotonic()
        self.current = (name, self.now_ms())

    def end(self) -> None:
        if self.current:
            name, start = self.current
            self.phases.append(Phase(name=name, start_ms=round(start, 3),
                                     end_ms=round(self.now_ms(), 3)))
            self.current = None


@dataclass
class RunContext:
    """One run's shared facts; built by the engine, read (and sometimes noted in) by parts."""

    scenario: Scenario
    registry: Registry
    testbed: Testbed
    image: GuestImage
    accel: str
    ui: Ui
    state: RunState
    link: LinkFacts
    pki_dir: Path
    build_dir: Path
    src: QemuVm | None = None
    dst: QemuVm | None = None
    #: Fields the record gets at its top level (``vm_lost``, ``guest_unresponsive``, ...).
    notes: dict[str, Any] = field(default_factory=dict)
    #: When B's QEMU announced RESUME (``time.monotonic()``); set by the engine.
    resumed_at: float | None = None
    #: The memory copy's predicted time (s), when the memory part predicted it at
    #: ``prepare`` (the surveyed strategies); storage's ``auto`` plans with it.
    memory_predicted_s: float | None = None
    faults: Faults = field(init=False)
    budget: Budget = field(init=False)

    @property
    def run_dir(self) -> Path:
        return self.registry.run_dir

    def vm_config(self, site: str, disk: Path) -> VmConfig:
        """The QEMU settings for the guest at ``site`` (``b`` is a migration destination)."""
        sc, addr = self.scenario, self.testbed.addr
        return VmConfig(name=f"vm-{site}", image=self.image, disk=disk,
                        disk_format=image_format(disk), disk_backed=has_backing(disk),
                        ram_mib=sc.vm.ram_mib,
                        mac=addr.vm_mac, tap=addr.tap, ip_cidr=addr.vm_cidr, accel=self.accel,
                        gateway=addr.gateway("a"),
                        netns=self.testbed.site(site).name, incoming=site == "b",
                        dirty=((sc.vm.dirty_mib, sc.vm.dirty_rate_mbps)
                               if sc.vm.workload == "dirty" else None),
                        diskwrite=((sc.vm.disk_write_mib, sc.vm.disk_write_mbps)
                                   if sc.vm.disk_write_mbps else None),
                        root="debian" if sc.vm.root == "debian" else None,
                        ram_file=(self.registry.memory_file(f"vm-{site}")
                                  if sc.memory.verify else None))


class Part:
    """A memory strategy, storage strategy or network mode: every hook does nothing
    unless the part needs it."""

    kind: ClassVar[str] = "part"
    name: ClassVar[str] = "part"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind} {self.name!r})"

    async def setup(self, ctx: RunContext) -> None:
        """The sites are up, the guest not booted, the client not started: servers the
        client needs from the start (a network mode's DNS)."""

    def client_name(self) -> tuple[str, str] | None:
        """A network mode's name for the VM and the DNS server the client resolves it
        through (new connections by name); None: the client uses the address."""
        return None

    async def prepare(self, ctx: RunContext) -> None:
        """Before anything moves: the destination exists, channels are opened."""

    async def copy(self, ctx: RunContext) -> None:
        """The bulk copy of this part's state while the source runs."""

    async def switchover(self, ctx: RunContext) -> None:
        """The source is stopped: move what is left; the destination must not run yet."""

    async def redirect(self, ctx: RunContext) -> None:
        """The destination runs: the VM's network identity moves to it."""

    async def finish(self, ctx: RunContext) -> None:
        """Background work that ends after the move (postcopy's last pages, ...)."""

    async def rollback(self, ctx: RunContext) -> None:
        """Undo what this part did; the destination is fenced and has never run."""

    def borrows_from_source(self) -> bool:
        """Whether the destination, once it ran, still needs the source for this part's
        state (postcopy's pages not yet fetched): then the source's death loses the VM."""
        return False

    async def close(self) -> None:
        """At the run's end, however it ended (the VMs are stopped): stop the servers and
        close the handles this part opened.  Idempotent."""

    def record(self) -> dict[str, Any]:
        """This part's block of the result record."""
        return {}

    def integrity(self) -> dict[str, Any]:
        """Fields this part adds to the record's ``integrity`` block (its own checks)."""
        return {}

    def instants(self) -> dict[str, float]:
        """Moments of the switchover this part saw (name: ``time.monotonic()`` s), for
        the record's ``switchover_timeline``."""
        return {}


class StoragePart(Part, abc.ABC):
    """A storage strategy also says which disk image each site's QEMU opens."""

    kind: ClassVar[str] = "storage"

    @abc.abstractmethod
    async def create(self, ctx: RunContext) -> None:
        """Make the guest's disk before the source boots."""

    @abc.abstractmethod
    def disk_for(self, site: str) -> Path:
        """The image the QEMU at ``site`` opens."""

    @property
    def log_disk(self) -> Path | None:
        """Where the guest's integrity log is read from after the run (None: not made)."""
        return None

    async def before_run(self, ctx: RunContext) -> None:
        """Both QEMUs stopped, B loaded and never run: the last changes to B's disk and
        the checks on it (verify mode compares the disks here)."""

    async def check(self) -> None:
        """After both QEMUs have stopped: checks on the disks (their fields: ``integrity``)."""
