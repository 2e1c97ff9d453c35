"""The VM's local disk and the checks on it, with ``qemu-img`` and e2fsprogs.

A local-disk run (every storage strategy but ``shared``) gives each site a
directory of its own under the run directory::

    <run dir>/base.raw            the base image both sites hold (read-only)
    <run dir>/site-a/disk.qcow2   the source's disk: a qcow2 overlay on the base,
                                  holding what the guest itself wrote
    <run dir>/site-b/disk.qcow2   the destination's disk, filled by the strategy

The busybox guest's base is its ext2 data disk with an empty integrity log
(``qemu.image.create_data_disk``).  Everything here reads images with
``-U`` (force-share), so it works while a QEMU holds them open.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..children import run_command
from ..errors import StorageError
from ..qemu.image import create_data_disk, read_integrity_log

#: What one qemu-img or e2fsck call may take (a 4 GiB image is read in seconds here).
TOOL_TIMEOUT_S = 300.0
#: What e2fsck finds on any crash-consistent image of an ext2 filesystem that a
#: running guest still has mounted: the allocation bitmaps and free counts,
#: which the guest kernel writes back lazily, lag the inodes (the integrity
#: log is written O_DSYNC: its data and inode are on disk, its block's bit
#: in the bitmap may not be).  e2fsck repairs these without losing data;
#: these lines alone do not make a disk unclean.  Anything else -- bad or
#: duplicate blocks, broken directories, unattached inodes -- does.
FSCK_BENIGN = ("Free blocks count wrong", "Free inodes count wrong",
               "Padding at end of inode bitmap is not set",
               "Block bitmap differences", "Inode bitmap differences",
               "Directories count wrong")
#: An append the guest was making when its image was taken: the new block already
#: linked (an indirect block is written before the inode), the inode's size and block
#: count not yet.  Benign only when the inode lags (what it "should be" is larger):
#: an inode that claims more than its blocks hold is damage.
_FSCK_APPEND_LAG = re.compile(r"^Inode \d+, i_(?:size|blocks) is (\d+), should be (\d+)\.")
#: e2fsck's closing summary ("LABEL: 12/16384 files (8.3% non-contiguous), ...").
_FSCK_SUMMARY = re.compile(r"^\S+: \d+/\d+ files ")


def image_format(path: Path) -> str:
    """The format QEMU opens ``path`` with: qcow2 by its suffix, else raw."""
    return "qcow2" if Path(path).suffix == ".qcow2" else "raw"


def has_backing(path: Path) -> bool:
    """Whether a qcow2 image names a backing file (its header's backing_file_offset)."""
    if image_format(path) != "qcow2":
        return False
    with Path(path).open("rb") as f:
        header = f.read(16)
    return len(header) == 16 and int.from_bytes(header[8:16], "big") != 0


async def qemu_img(*args: str, what: str, check: bool = True) -> tuple[int, str]:
    """Run ``qemu-img ARGS``; its exit code and stdout (StorageError on failure when
    ``check``)."""
    done = await run_command(("qemu-img", *args), timeout=TOOL_TIMEOUT_S, error=StorageError,
                             check=check, what=what)
    return done.code, done.out if check or done.code <= 1 else done.err


async def create_overlay(path: Path, backing: Path) -> None:
    """A qcow2 overlay on ``backing`` (its format by ``image_format``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    await qemu_img("create", "-q", "-f", "qcow2", "-b", str(backing.absolute()),
                   "-F", image_format(backing), str(path), what=f"creating {path.name}")


async def create_empty(path: Path, size_bytes: int) -> None:
    """An empty qcow2 image of ``size_bytes`` (reads as zeros)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    await qemu_img("create", "-q", "-f", "qcow2", str(path), str(size_bytes),
                   what=f"creating {path.name}")


@dataclass(frozen=True)
class DiskFacts:
    """What a disk holds, guest-visible (its whole backing chain)."""

    virtual_bytes: int
    allocated_bytes: int    # data somewhere in the chain
    zero_bytes: int         # known zero (unallocated, or zero clusters)
    top_bytes: int          # data in the top image itself (an overlay: what the guest wrote)

    def summary(self) -> dict[str, int]:
        return {"virtual_bytes": self.virtual_bytes, "allocated_bytes": self.allocated_bytes,
                "zero_bytes": self.zero_bytes, "overlay_bytes": self.top_bytes}


async def image_map(path: Path) -> list[dict[str, Any]]:
    """``qemu-img map -U --output=json`` of ``path``: its extents, whole chain."""
    _, out = await qemu_img("map", "-U", "--output=json", str(path), what=f"mapping {path.name}")
    try:
        return list(json.loads(out))
    except (json.JSONDecodeError, TypeError) as exc:
        raise StorageError(f"qemu-img map of {path.name} gave no JSON", cause=exc) from exc


async def disk_facts(path: Path) -> DiskFacts:
    """What ``path`` holds (``image_map``): allocated, zero and top-layer bytes."""
    virtual = allocated = zero = top = 0
    for e in await image_map(path):
        length = int(e["length"])
        virtual = max(virtual, int(e["start"]) + length)
        if e.get("zero"):
            zero += length
        elif e.get("data"):
            allocated += length
            if int(e.get("depth", 0)) == 0:
                top += length
    return DiskFacts(virtual_bytes=virtual, allocated_bytes=allocated, zero_bytes=zero,
                     top_bytes=top)


#: Room a destination needs beyond the bytes it receives: qcow2 metadata and what the
#: guest writes while it moves.
ROOM_MARGIN = 0.1
ROOM_MARGIN_BYTES = 16 * 2**20


def check_room(directory: Path, receives: int) -> None:
    """StorageError unless ``directory``'s filesystem can hold ``receives`` bytes of disk
    (with ``ROOM_MARGIN``): said before anything is copied, not when the copy fails."""
    needed = int(receives * (1 + ROOM_MARGIN)) + ROOM_MARGIN_BYTES
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise StorageError(f"the destination's disk directory {directory} has "
                           f"{free / 2**20:.0f} MiB free; the disk needs "
                           f"{needed / 2**20:.0f} MiB there ({receives / 2**20:.0f} MiB of "
                           f"data and room for metadata and new writes)")


@dataclass(frozen=True)
class DiskComparison:
    match: bool
    first_difference: int | None  # byte offset, when they differ
    detail: str


async def compare(a: Path, b: Path) -> DiskComparison:
    """Whether two disks read the same to the guest (``qemu-img compare``, chains
    included; a shorter image must read as zeros beyond its end)."""
    code, out = await qemu_img("compare", "-U", str(a), str(b), check=False,
                               what=f"comparing {a.name} and {b.name}")
    if code == 0:
        return DiskComparison(match=True, first_difference=None, detail="identical")
    if code == 1:
        offset = None
        for word in out.replace("!", " ").split():
            if word.isdigit():
                offset = int(word)
        return DiskComparison(match=False, first_difference=offset, detail=out.strip())
    raise StorageError(f"qemu-img compare {a.name} {b.name} failed: {out.strip()}")


def _scratch() -> tempfile.TemporaryDirectory[str]:
    """Room for a flattened copy of a disk (mode 0700; ``$TMPDIR``): not beside the
    disk, whose directory may be the one too full for it (a destination without room
    still has its source's log read after the rollback)."""
    return tempfile.TemporaryDirectory(prefix="wanmig-disk-")


async def flatten(path: Path, raw: Path) -> None:
    """The guest-visible content of ``path`` as a raw image at ``raw``."""
    await qemu_img("convert", "-U", "-O", "raw", str(path), str(raw),
                   what=f"flattening {path.name}")


@dataclass(frozen=True)
class FsckResult:
    clean: bool
    problems: list[str]     # e2fsck's lines beyond the benign ones


async def fsck(path: Path) -> FsckResult:
    """``e2fsck -fn`` on the guest-visible content of ``path`` (flattened first:
    e2fsck reads raw filesystems).  A filesystem the guest still had mounted
    is judged by its structure: out-of-date free counts alone are clean."""
    with _scratch() as tmp:
        raw = Path(tmp) / "fsck.raw"
        if image_format(path) == "raw":
            os.link(path, raw)
        else:
            await flatten(path, raw)
            await recover_journal(raw)
        done = await run_command(("e2fsck", "-f", "-n", str(raw)), timeout=TOOL_TIMEOUT_S,
                                 error=StorageError, check=False, what=f"e2fsck {path.name}")
    if done.code == 0:
        return FsckResult(clean=True, problems=[])
    # 1: errors corrected (not with -n); 4: errors left; 8 with 4 (12): e2fsck gave up
    # on a filesystem it could not repair in -n mode -- damage too.  8 alone: e2fsck's own.
    if not done.code & (1 | 4):
        raise StorageError(f"e2fsck {path.name} failed (exit {done.code}): {done.err}")
    problems = fsck_problems(done.out + "\n" + done.err, str(raw))
    return FsckResult(clean=not problems, problems=problems[:10])


def _benign(line: str) -> bool:
    if line.startswith(FSCK_BENIGN) or _FSCK_SUMMARY.match(line):
        return True
    lag = _FSCK_APPEND_LAG.match(line)
    return lag is not None and int(lag.group(2)) > int(lag.group(1))


def fsck_problems(output: str, image: str) -> list[str]:
    """The lines of ``e2fsck -fn`` output that say the filesystem is damaged: not its
    progress, not what any crash-consistent image of a mounted ext2 shows."""
    return [ln for ln in (raw_ln.strip() for raw_ln in output.splitlines())
            if ln and not ln.startswith(("Pass ", "e2fsck ", image, "Fix? no"))
            and "WARNING" not in ln and not _benign(ln)]


@dataclass(frozen=True)
class LocalDisks:
    """One run's disks when each site has its own (the module's layout)."""

    base: Path
    source: Path
    target: Path

    @classmethod
    def at(cls, run_dir: Path, base: Path | None = None) -> LocalDisks:
        """The layout under ``run_dir``; ``base``: a shared, prebuilt base image instead
        of an empty one made in the run directory."""
        return cls(base=base or run_dir / "base.raw",
                   source=run_dir / "site-a" / "disk.qcow2",
                   target=run_dir / "site-b" / "disk.qcow2")

    def for_site(self, site: str) -> Path:
        return {"a": self.source, "b": self.target}[site]

    async def create(self, size_mib: int, *, target_on_base: bool) -> None:
        """The base (read-only from now on), A's overlay on it, and B's disk: an
        overlay on its own base when ``target_on_base``, else an empty image of the
        same size (what libvirt's ``--copy-storage-all`` fills).  A base that exists
        already (a prebuilt one) is used as it is."""
        if not self.base.exists():
            await asyncio.to_thread(create_data_disk, self.base, size_mib)
            self.base.chmod(0o444)
        await create_overlay(self.source, self.base)
        if target_on_base:
            await create_overlay(self.target, self.base)
        else:
            await create_empty(self.target, size_mib * 2**20)


async def recover_journal(raw: Path) -> None:
    """Replay the ext4 journal a running guest left in ``raw`` (a copy: it is changed),
    as mounting it would: what the journal holds is part of the image's state, and a
    check or a read without it sees the filesystem before those transactions.  An
    ext2 image has no journal: nothing happens."""
    done = await run_command(("e2fsck", "-E", "journal_only", "-y", str(raw)),
                             timeout=TOOL_TIMEOUT_S, error=StorageError, check=False,
                             what=f"replaying the journal of {raw.name}")
    if done.code > 1:   # 0: nothing to do, 1: replayed
        raise StorageError(f"replaying the journal of {raw.name} failed (exit {done.code}): "
                           f"{(done.out + done.err).strip()[-300:]}")


async def read_log(disk: Path) -> bytes:
    """The guest's integrity log from its data disk, whatever the image format."""
    if image_format(disk) == "raw":
        return await asyncio.to_thread(read_integrity_log, disk)
    with _scratch() as tmp:
        raw = Path(tmp) / "log.raw"
        await flatten(disk, raw)
        await recover_journal(raw)
        return await asyncio.to_thread(read_integrity_log, raw)


async def _debugfs(raw: Path, request: str) -> str:
    done = await run_command(("debugfs", "-R", request, str(raw)), timeout=TOOL_TIMEOUT_S,
                             error=StorageError, what=f"debugfs {request}")
    return done.out


async def read_files(disk: Path, directory: str, suffix: str) -> dict[str, str]:
    """The text of every file in ``directory`` of the guest's filesystem whose name ends
    in ``suffix`` (the image flattened, its journal replayed): an application's own
    files, read after the run ({} when the directory is not there)."""
    with _scratch() as tmp:
        raw = Path(tmp) / "files.raw"
        await flatten(disk, raw)
        await recover_journal(raw)
        names = (await _debugfs(raw, f"ls -p {directory}")).splitlines()
        out = {}
        for line in names:   # /inode/mode/uid/gid/name/size/
            parts = line.strip().strip("/").split("/")
            if len(parts) >= 5 and parts[4].endswith(suffix):
                out[parts[4]] = await _debugfs(raw, f"cat {directory}/{parts[4]}")
        return out
