"""Which QEMU runs, and whether wanmig supports it.

wanmig needs QEMU 10.0 or newer: its migration code has the fixes and the
features the memory, disk and fault parts rely on (multifd zero pages,
postcopy preempt and recovery, ``switchover-ack``, TLS with NBD).  Debian 13
ships 10.0; Debian 12 gets the same build from ``bookworm-backports``
(``make setup`` installs it).  An older QEMU is refused with one line saying
how to get 10.0.

Two environment variables exist for research, e.g. reproducing a bug on the
QEMU an older release shipped (``docs/design.md``, "Memory integrity"):

* ``WANMIG_QEMU``: the ``qemu-system-x86_64`` to run (default: the one on
  ``PATH``), with ``WANMIG_QEMU_DATADIR`` (colon-separated) as its ``-L``
  firmware directories, for a QEMU unpacked outside ``/usr``;
* ``WANMIG_ALLOW_OLD_QEMU=1``: run a QEMU older than 10.0 anyway (logged as a
  warning; every record names the version that ran, ``vm.qemu_version``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import ConfigError

log = logging.getLogger("wanmig.qemu")

MIN_VERSION = (10, 0)
DEFAULT_BINARY = "qemu-system-x86_64"
HOW_TO_GET = ("Debian 12: `make setup`, or apt-get install -t bookworm-backports "
              "qemu-system-x86 qemu-utils; Debian 13: apt-get install qemu-system-x86")
_VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class QemuBinary:
    path: str
    version: tuple[int, int, int]
    banner: str                       # QEMU's first --version line
    datadirs: tuple[str, ...] = ()    # extra -L directories

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def argv_prefix(self) -> list[str]:
        """The binary and its firmware directories, for a command line."""
        return [self.path, *(a for d in self.datadirs for a in ("-L", d))]


def parse_version(banner: str) -> tuple[int, int, int]:
    """``(major, minor, micro)`` from ``qemu-system-x86_64 --version``'s first line."""
    m = _VERSION_RE.search(banner)
    if not m:
        raise ConfigError(f"cannot read a QEMU version from {banner!r}")
    return int(m[1]), int(m[2]), int(m[3] or 0)


def check_supported(binary: QemuBinary, *, allow_old: bool = False) -> None:
    """ConfigError (one line, with the way to get 10.0) for a QEMU below ``MIN_VERSION``."""
    if binary.version[:2] >= MIN_VERSION:
        return
    need = ".".join(map(str, MIN_VERSION))
    if allow_old:
        log.warning("running QEMU %s (%s), below the supported %s, because "
                    "WANMIG_ALLOW_OLD_QEMU is set", binary.version_text, binary.path, need)
        return
    raise ConfigError(f"QEMU {binary.version_text} ({binary.path}) is too old: wanmig needs "
                      f"QEMU {need} or newer ({HOW_TO_GET})")


@functools.cache
def qemu_binary() -> QemuBinary:
    """The QEMU wanmig runs (``WANMIG_QEMU`` or ``PATH``), checked once per process."""
    wanted = os.environ.get("WANMIG_QEMU") or DEFAULT_BINARY
    path = shutil.which(wanted)
    if path is None:
        raise ConfigError(f"{wanted} not found ({HOW_TO_GET})")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"{path} --version failed: {exc}") from exc
    datadirs = tuple(d for d in os.environ.get("WANMIG_QEMU_DATADIR", "").split(":") if d)
    binary = QemuBinary(path=path, version=parse_version(out), banner=out.splitlines()[0],
                        datadirs=datadirs)
    check_supported(binary, allow_old=os.environ.get("WANMIG_ALLOW_OLD_QEMU") == "1")
    return binary
