"""What a run created, written down before it is created, so a crash leaves a trail.

Every run owns a directory ``/run/wanmig/<run_id>/`` (sockets, serial logs,
disks) and a file ``/run/wanmig/<run_id>.json`` listing the network namespaces
and processes it made, with the PID of the wanmig process that owns them.
Resources are registered *before* they are created and unregistered after
they are removed, so the file is always a superset of what exists.

Runs that compare guest RAM (``memory.verify``) keep it in files under
``/dev/shm/wanmig/<run_id>/``, removed with the run whatever happened.

The run directory holds the guest's disk, its QMP sockets (a monitor is full
control of the VM) and, for the memory survey, ``pmemsave`` dumps of guest
RAM: it is created mode 0700, as is the state directory when wanmig creates
it, whatever the umask.

``wanmig clean`` reads these files and removes everything whose owner is no
longer alive (or everything, with ``force``).  Processes are only killed when
their command line still names the run's directory, so a recycled PID of
somebody else's process is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .fileio import atomic_write

STATE_DIR = Path(os.environ.get("WANMIG_STATE_DIR", "/run/wanmig"))
#: Guest RAM as files, for runs that compare it (``memory.verify``): in memory, never on disk.
MEMORY_DIR = Path(os.environ.get("WANMIG_MEMORY_DIR", "/dev/shm/wanmig"))
#: ``wanmig clean`` leaves a run directory without a state file alone this long.
KEPT_DIR_MIN_AGE_S = 60.0
DIR_MODE = 0o700

log = logging.getLogger("wanmig.registry")


def new_run_id() -> str:
    """A short id used in namespace names (which must stay short)."""
    return uuid.uuid4().hex[:6]


@dataclass
class Registry:
    """The on-disk list of one run's namespaces and processes."""

    run_id: str
    owner_pid: int = field(default_factory=os.getpid)
    namespaces: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    #: The run state (``wanmig.runstate``) as last entered: after a crash ``wanmig
    #: clean`` says where the run was.
    stage: str | None = None

    def __post_init__(self) -> None:
        private_dir(STATE_DIR)
        private_dir(self.run_dir, tighten=True)  # ours even if a crashed run left it
        self._save()

    def __repr__(self) -> str:
        return (f"Registry(run_id={self.run_id!r}, namespaces={self.namespaces}, "
                f"pids={self.pids})")

    @property
    def run_dir(self) -> Path:
        return STATE_DIR / self.run_id

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.run_id}.json"

    def memory_file(self, name: str) -> Path:
        """Where VM ``name``'s RAM lives when it is file-backed; its directory is
        created 0700 (it holds the guest's memory) and removed by ``close``."""
        private_dir(MEMORY_DIR)
        private_dir(MEMORY_DIR / self.run_id, tighten=True)
        return MEMORY_DIR / self.run_id / f"{name}.ram"

    def add_netns(self, name: str) -> None:
        self.namespaces.append(name)
        self._save()

    def drop_netns(self, name: str) -> None:
        if name in self.namespaces:
            self.namespaces.remove(name)
            self._save()

    def add_pid(self, pid: int) -> None:
        self.pids.append(pid)
        self._save()

    def drop_pid(self, pid: int) -> None:
        if pid in self.pids:
            self.pids.remove(pid)
            self._save()

    def note_stage(self, stage: str) -> None:
        self.stage = stage
        self._save()

    def close(self, *, keep_run_dir: bool = False) -> None:
        """Forget the run: called once everything it made has been removed."""
        self.path.unlink(missing_ok=True)
        # guest RAM is never kept: two copies of the VM's memory, in memory
        shutil.rmtree(MEMORY_DIR / self.run_id, ignore_errors=True)
        if not keep_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _save(self) -> None:
        private_dir(STATE_DIR)
        atomic_write(self.path, json.dumps({"run_id": self.run_id, "owner_pid": self.owner_pid,
                                            "namespaces": self.namespaces,
                                            "pids": self.pids, "stage": self.stage}).encode())


def private_dir(path: Path, *, tighten: bool = False) -> None:
    """Create ``path`` (and missing parents) with mode 0700, not what the umask leaves.

    An existing directory is left as it is unless ``tighten``: ``WANMIG_STATE_DIR``
    may name a directory wanmig does not own (``/tmp``, say), which must not be
    chmodded; a run directory is always wanmig's.
    """
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        if not (tighten and path.is_dir()):
            return
    os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask; chmod's is not


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kill_owned(pid: int, marker: str, *, grace_s: float = 3.0) -> bool:
    """Kill ``pid`` if its command line contains ``marker``; True if it was ours."""
    if marker not in cmdline_of(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def remove_netns(name: str) -> None:
    """Delete a namespace; its interfaces go with it (veth peers too)."""
    if netns_exists(name):
        subprocess.run(["ip", "netns", "delete", name], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def leftovers(run_id: str) -> list[str]:
    """What a finished run left behind, a line each (nothing is removed): its
    namespaces, processes whose command line names its run directory, its state file,
    its guest RAM files."""
    run_dir = str(STATE_DIR / run_id)
    netns = Path("/run/netns")
    found = [f"netns {p.name}" for p in sorted(netns.iterdir())
             if p.name.startswith(f"wm{run_id}-")] if netns.is_dir() else []
    found += [f"process {p.name}" for p in Path("/proc").iterdir()
              if p.name.isdigit() and run_dir in cmdline_of(int(p.name))]
    for path in (STATE_DIR / f"{run_id}.json", MEMORY_DIR / run_id):
        if path.exists():
            found.append(f"file {path}")
    return found


def run_owned_by(pid: int) -> tuple[Path, str] | None:
    """The run directory and recorded stage of the migration process ``pid`` runs: its
    state file with a stage (the accelerator's probe boot registers too, with none)."""
    for path in STATE_DIR.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("owner_pid") == pid and data.get("stage"):
            return STATE_DIR / str(data["run_id"]), str(data["stage"])
    return None


def clean_leftovers(*, force: bool = False) -> list[str]:
    """Remove what crashed runs left behind; returns a line per thing removed."""
    removed: list[str] = []
    if not STATE_DIR.exists():
        return removed
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        owner = int(data.get("owner_pid", 0))
        if not force and pid_alive(owner):
            log.info("run %s still owned by live pid %d: left alone", data.get("run_id"), owner)
            continue
        run_dir = STATE_DIR / str(data["run_id"])
        for pid in data.get("pids", []):
            if kill_owned(int(pid), str(run_dir)):
                removed.append(f"process {pid}")
        for name in data.get("namespaces", []):
            if netns_exists(name):
                remove_netns(name)
                removed.append(f"netns {name}")
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(MEMORY_DIR / str(data["run_id"]), ignore_errors=True)
        path.unlink(missing_ok=True)
        stage = data.get("stage")
        removed.append(f"run {data['run_id']}" + (f" (it was {stage})" if stage else ""))
    # run directories a failed run kept for inspection (``close(keep_run_dir=True)``):
    # nothing owns them any more, and a local disk's images can be large.  One made in
    # the last KEPT_DIR_MIN_AGE_S may be a run starting now (its state not written yet).
    live = {p.stem for p in STATE_DIR.glob("*.json")}
    now = time.time()
    for kept in sorted(p for p in STATE_DIR.iterdir() if p.is_dir() and p.name not in live):
        if now - kept.stat().st_mtime < KEPT_DIR_MIN_AGE_S:
            continue
        shutil.rmtree(kept, ignore_errors=True)
        removed.append(f"kept run directory {kept.name}")
    return removed
