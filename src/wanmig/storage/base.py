"""The base image both sites hold: what the VM's disk is an overlay on.

``[vm] base``:

* ``empty`` (the default, for tests and memory runs): an ext2 filesystem
  holding only the integrity log, made in the run directory (milliseconds).
* ``debian``: a real Debian root filesystem (minbase with nginx-light and
  redis-server, ``tools/debian-rootfs``, which ``make setup`` runs) in an
  ext2 filesystem of ``disk_mib`` (ext4 when the guest boots from it,
  ``ROOT_FSTYPE``), beside the integrity log.  Built once per
  tarball and size into ``<build dir>/bases/`` and shared read-only by every
  run, as a golden image is by the hosts of both data centres.

The busybox guest mounts the base's filesystem at ``/data`` either way: its
disk holds what a real VM's root does, and what it writes lands in its overlay.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StorageError
from ..qemu.image import create_data_disk

if TYPE_CHECKING:
    from ..context import RunContext

#: Bump when the way a base is made changes (the cache key includes it).
LAYOUT = 1
ROOTFS_TAR = Path("debian") / "rootfs.tar"
TIMEOUT_S = 600
#: The base's filesystem by what the guest does with it.  The busybox guest mounts it
#: at /data and only appends its log and rewrites a file in place: an image taken while
#: it runs is ext2-consistent up to the lags ``storage.disk.FSCK_BENIGN`` names.  The
#: Debian guest boots from it and makes files and directories as it starts; ext2 writes
#: their metadata back lazily and in no order, so an image of it taken while it runs
#: held entries whose inodes were never written (seen on B after a migration, and
#: ``dirsync`` did not prevent it: ext2 syncs the directory, not the new inode).  Its
#: root is ext4: the journal, replayed on the host's copy
#: (``storage.disk.recover_journal``), makes any such image consistent.
ROOT_FSTYPE = {"initramfs": "ext2", "debian": "ext4"}


def rootfs_tar(build_dir: Path) -> Path:
    return build_dir / ROOTFS_TAR


def debian_base(build_dir: Path, size_mib: int, fstype: str = "ext2") -> Path:
    """The cached ``debian`` base image of ``size_mib`` in ``fstype`` (built now if
    missing)."""
    tar = rootfs_tar(build_dir)
    if not tar.is_file():
        raise StorageError(f"the debian base needs {tar}: run `make setup` "
                           f"(tools/debian-rootfs {tar})")
    st = tar.stat()
    key = hashlib.sha256(f"{LAYOUT}:{st.st_size}:{st.st_mtime_ns}:{size_mib}"
                         f"{'' if fstype == 'ext2' else ':' + fstype}".encode())
    out = build_dir / "bases" / f"debian-{size_mib}m-{key.hexdigest()[:12]}.raw"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        root, image = Path(tmp) / "root", Path(tmp) / "base.raw"
        root.mkdir()
        try:
            subprocess.run(["tar", "-xf", str(tar), "-C", str(root), "--numeric-owner"],
                           check=True, capture_output=True, timeout=TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            err = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip()
            raise StorageError(f"unpacking {tar} failed: {err[-300:]}", cause=exc) from exc
        create_data_disk(image, size_mib, tree=root, fstype=fstype)
        image.chmod(0o444)
        os.replace(image, out)
    return out


async def base_image(ctx: RunContext) -> Path | None:
    """The prebuilt base the scenario's disk is an overlay on (``debian``), or None
    (``empty``: the storage part makes its own)."""
    vm = ctx.scenario.vm
    if vm.base != "debian":
        return None
    return await asyncio.to_thread(debian_base, ctx.build_dir, vm.disk_mib,
                                   ROOT_FSTYPE[vm.root])
