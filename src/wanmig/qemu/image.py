"""The guest image: a Debian cloud kernel plus a busybox initramfs built here.

Why build our own: the project needs a guest that boots in seconds under TCG,
runs the measured workloads (HTTP, UDP/TCP echo, a durable integrity writer,
optionally a memory dirtier) and nothing else, and can be built offline from
what Debian already ships. No image is downloaded; only the kernel package
comes from apt.

Pipeline (each step is cached; ``build_image`` returns at once when nothing changed)::

    apt-cache depends linux-image-cloud-amd64   -> linux-image-<ver>-cloud-amd64
    apt-get download  (into build/cache/)        -> <pkg>_<debver>_amd64.deb
    dpkg-deb -x       (into build/kernel/)       -> vmlinuz, config, modules
    modinfo -F depends (per .ko)                 -> module_load_order()   [pure]
    gcc -static -O2 guest/guestd.c               -> guestd
    ldd /sbin/e2fsck                             -> e2fsck and its libraries
    newc cpio written here (no root, no mknod, fixed mtimes) + gzip
                                                 -> build/image/{vmlinuz,initrd.gz,manifest.json}

The kernel package is unpacked, never installed on the host. A .deb already in
``build/cache/`` is reused without asking apt, so a second build works offline;
``force=True`` asks apt again and rebuilds everything.

Cache key: ``manifest.json`` holds a digest over every input (kernel .deb name
and size, busybox sha256, ``init`` and ``guestd.c`` contents, e2fsck's contents,
module roots and the layout version). See ``ImageInputs``. Outputs are replaced by rename, so a
QEMU that already opened the old files is not disturbed by a rebuild, and a file
lock keeps two concurrent builds from interleaving.

Inside the guest (see guest/init): modules are insmod-ed in ``/etc/modules.order``;
network settings come from ``wanmig.ip=`` / ``wanmig.gw=`` / ``wanmig.name=`` on
the kernel command line (``GuestImage.cmdline``), and so does the optional memory
dirtier (``wanmig.dirty=SIZE_MIB:RATE_MBPS``, the ``dirty`` workload); the data
disk ``/dev/vda`` (ext2, ``create_data_disk``) is checked with the host's e2fsck
(copied in with its libraries: busybox has none) and mounted on /data, where the
integrity writer appends to ``/integrity.log`` (read back on the host with
``read_integrity_log`` and checked with ``wanmig.integrity.check_log``). The line
``READY_MARKER`` on the serial console means every workload is serving.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import json
import lzma
import math
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wanmig.errors import ConfigError, ImageError
from wanmig.fileio import atomic_write, locked

__all__ = [
    "DEFAULT_BUILD_DIR",
    "READY_MARKER",
    "ERROR_MARKER",
    "MODULE_ROOTS",
    "GuestImage",
    "ImageInputs",
    "gather_inputs",
    "CpioEntry",
    "build_image",
    "create_data_disk",
    "read_integrity_log",
    "default_build_dir",
    "module_load_order",
    "parse_kernel_config",
    "filesystem_modules",
    "render_cmdline",
    "DIRTY_MAX_MIB",
    "DIRTY_MAX_MBPS",
    "newc_archive",
]

READY_MARKER = "wanmig-guest: ready"
"""Printed by the guest's /init on the console once every workload is serving."""

ERROR_MARKER = "wanmig-guest: error"
"""Prefix of the console line /init prints when booting (or a workload) failed."""

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"

MODULE_ROOTS: tuple[str, ...] = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_console")
"""Modules the guest needs; their dependencies are added at build time.

virtio_pci is listed on its own: it is the transport the devices sit on, and no
device driver depends on it by symbol."""

INTEGRITY_LOG_NAME = "integrity.log"
"""The writer's log, at the root of the data disk (``/data/integrity.log`` in the guest)."""

LAYOUT_VERSION = 2
"""Bump when the image layout changes in a way the other inputs do not capture."""

GUEST_SOURCE_DIR = Path(__file__).resolve().parent.parent / "guest"
BUSYBOX = Path("/bin/busybox")
#: The guest's boot checks its ext2 data disk with this (and the libraries ``ldd``
#: names for it): ext2 has no journal, a QEMU stopped with the guest running is a
#: power cut, and the block bitmaps of the guest's last allocations are then not on
#: the disk. Mounted unchecked, the next boot hands those blocks out again and the
#: integrity log overwrites itself (seen once in CI: 224 records doubled, 240 lost).
E2FSCK = Path("/sbin/e2fsck")

Log = Callable[[str], None]


def default_build_dir() -> Path:
    """``$WANMIG_BUILD_DIR`` if set, else ``./build`` (the project root's build dir)."""
    env = os.environ.get("WANMIG_BUILD_DIR")
    return Path(env) if env else Path.cwd() / "build"


DEFAULT_BUILD_DIR: Path = default_build_dir()
"""Evaluated at import; ``build_image(None)`` re-reads the environment at call time."""


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class GuestImage:
    """A built guest: what QEMU needs for ``-kernel``/``-initrd``/``-append``."""

    kernel: Path
    initrd: Path
    kernel_version: str
    digest: str

    def cmdline(self, *, ip_cidr: str, gateway: str | None = None, name: str = "vm",
                dirty: tuple[int, float] | None = None,
                diskwrite: tuple[int, float] | None = None, root: str | None = None) -> str:
        """The kernel command line for one VM; see ``render_cmdline``."""
        return render_cmdline(ip_cidr=ip_cidr, gateway=gateway, name=name, dirty=dirty,
                              diskwrite=diskwrite, root=root)

    def to_dict(self) -> dict[str, str]:
        return {"kernel": str(self.kernel), "initrd": str(self.initrd),
                "kernel_version": self.kernel_version, "digest": self.digest}


_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

# Kernel arguments. Boot to ready is about 2.8 s under TCG with or without the
# tuning flags tried (mitigations=off, tsc=reliable, 8250.nr_uarts=1 made no
# measurable difference), so only these remain:
#  quiet loglevel=3  only errors (and worse) reach the serial console, so the ready
#                    line is easy to find and a real error still shows
#  no_timer_check    skip the IRQ0 timer check, which can fail spuriously when an
#                    emulated vCPU is starved on a loaded host
#  idle=halt         an idle vCPU halts at once: no cpuidle governor, whose poll
#                    state spins the vCPU between frames that come every ms.  Under
#                    TCG with the client's probes on, an idle guest answered 99-100 %
#                    of the 1 ms echoes beside a busy host process with it, 61-62 %
#                    without (2 runs each, 15 s; probe/probes.py has the rest)
#  panic=-1 is deliberately absent: a panic must stay on screen, not reboot in a loop
_BOOT_ARGS = ("console=ttyS0", "quiet", "loglevel=3", "no_timer_check", "idle=halt")


GUEST_ROOTS = ("debian",)
"""What ``wanmig.root=`` may name: a root filesystem on the disk the guest switches to."""

DIRTY_MAX_MIB = 65536
"""Largest working set of the guest's memory dirtier (``guestd dirty``), in MiB."""

DIRTY_MAX_MBPS = 10000.0
"""Highest rate the dirtier accepts, in MB/s (10^6 bytes); guestd.c has the same bounds."""


def _render_dirty(dirty: tuple[int, float]) -> str:
    """``(64, 20.0)`` -> ``64:20``, ``(8, 2.5)`` -> ``8:2.5``; ConfigError when out of range."""
    try:
        size, rate = dirty
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{dirty!r} is not (size_mib, rate_mbps)", field="dirty") from exc
    # bool is an int to Python, but never a size or a rate
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= DIRTY_MAX_MIB:
        raise ConfigError(f"working set {size!r} must be a whole number of MiB in "
                          f"1..{DIRTY_MAX_MIB}", field="dirty")
    if (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate)
            or not 0 <= rate <= DIRTY_MAX_MBPS):
        raise ConfigError(f"rate {rate!r} must be within 0..{DIRTY_MAX_MBPS:g} MB/s",
                          field="dirty")
    # repr() is the shortest text that reads back as the same float: guestd's
    # strtod() gets exactly the rate asked for; whole rates print without ".0"
    text = str(int(rate)) if float(rate).is_integer() else repr(float(rate))
    return f"{size}:{text}"


def render_cmdline(*, ip_cidr: str, gateway: str | None = None, name: str = "vm",
                   dirty: tuple[int, float] | None = None,
                   diskwrite: tuple[int, float] | None = None,
                   root: str | None = None) -> str:
    """Render the guest kernel command line; raises ``ConfigError`` on bad values.

    ``ip_cidr`` is the IPv4 address with prefix of eth0 (``10.77.0.10/24``),
    ``gateway`` the optional default route, ``name`` the hostname.  ``dirty``
    ``(size_mib, rate_mbps)`` starts the memory dirtier in the guest
    (``wanmig.dirty=64:20``): a working set of ``size_mib`` MiB (1..65536)
    whose pages are rewritten at ``rate_mbps`` MB/s (0..10000; 0 only holds
    the memory).  The guest also refuses a working set larger than its free
    memory, on the console at boot.  ``diskwrite`` ``(size_mib, rate_mbps)``
    starts the disk rewriter (``wanmig.diskwrite=32:5``): a file of
    ``size_mib`` on the data disk rewritten at ``rate_mbps`` MB/s.  ``root``
    ``"debian"`` makes the guest switch root to its disk, a Debian root, and run
    the ``app`` workload's nginx, Redis and app tier there (``wanmig.root=debian``).
    """
    if "/" not in ip_cidr:
        raise ConfigError(f"{ip_cidr!r} needs a prefix length, e.g. 10.77.0.10/24",
                          field="ip_cidr")
    try:
        iface = ipaddress.IPv4Interface(ip_cidr)
    except ValueError as exc:
        raise ConfigError(f"{ip_cidr!r} is not an IPv4 address/prefix", field="ip_cidr") from exc
    args = [*_BOOT_ARGS, f"wanmig.ip={iface.with_prefixlen}"]
    if gateway is not None:
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError as exc:
            raise ConfigError(f"{gateway!r} is not an IPv4 address", field="gateway") from exc
        args.append(f"wanmig.gw={gw}")
    if not _HOSTNAME_RE.match(name):
        raise ConfigError(f"{name!r} is not a valid hostname", field="name")
    args.append(f"wanmig.name={name}")
    if dirty is not None:
        args.append(f"wanmig.dirty={_render_dirty(dirty)}")
    if diskwrite is not None:
        args.append(f"wanmig.diskwrite={_render_dirty(diskwrite)}")
    if root is not None:
        if root not in GUEST_ROOTS:
            raise ConfigError(f"{root!r} is not a guest root; known: {', '.join(GUEST_ROOTS)}",
                              field="root")
        args.append(f"wanmig.root={root}")
    return " ".join(args)


# --------------------------------------------------------------------------- cache key


@dataclass(frozen=True)
class ImageInputs:
    """Everything the image is built from; ``digest()`` is the cache key."""

    kernel_deb: str
    kernel_deb_size: int
    busybox_sha256: str
    init_sha256: str
    guestd_sha256: str
    e2fsck_sha256: str = ""
    module_roots: tuple[str, ...] = MODULE_ROOTS
    layout_version: int = LAYOUT_VERSION

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_ldd(text: str) -> list[Path]:
    """The absolute paths of the libraries in ``ldd``'s output (the loader included,
    the kernel's vDSO not: it has no file)."""
    paths = []
    for line in text.splitlines():
        m = re.match(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$", line)
        if m:
            paths.append(Path(m.group(1)))
        elif "=>" in line and "not found" in line:
            raise ImageError(f"a library is missing: {line.strip()}")
    return paths


def program_files(program: Path) -> list[Path]:
    """``program`` and every library it loads, as the host has them."""
    if not program.is_file():
        raise ImageError(f"{program} is not installed (e2fsprogs)")
    try:
        out = subprocess.run(["ldd", str(program)], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"ldd {program} failed: {exc}") from exc
    return [program, *parse_ldd(out)]


def gather_inputs(deb: Path, guest_dir: Path, busybox: Path,
                  e2fsck: Path = E2FSCK) -> ImageInputs:
    """Read the inputs' identities (no subprocess: the cached path stays fast and
    offline). e2fsck's libraries are not part of the key: the image holds the copies
    ldd named when it was built, which work together whatever the host has since."""
    try:
        return ImageInputs(
            kernel_deb=deb.name,
            kernel_deb_size=deb.stat().st_size,
            busybox_sha256=_sha256_file(busybox),
            init_sha256=_sha256_file(guest_dir / "init"),
            guestd_sha256=_sha256_file(guest_dir / "guestd.c"),
            e2fsck_sha256=_sha256_file(e2fsck),
        )
    except OSError as exc:
        raise ImageError(f"cannot read an image input: {exc}") from exc


def kernel_version_from_deb(deb_name: str) -> str:
    """``linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb`` -> ``6.1.0-56-cloud-amd64``."""
    m = re.match(r"^linux-image-(\d[^_]*)_[^_]+_[^_]+\.deb$", deb_name)
    if not m:
        raise ImageError(f"not a kernel image package file name: {deb_name}")
    return m.group(1)


def parse_apt_depends(text: str) -> str:
    """The kernel package named by ``apt-cache depends linux-image-cloud-amd64``."""
    for line in text.splitlines():
        m = re.match(r"^\s*\|?Depends:\s*(linux-image-\d\S*-cloud-amd64)\s*$", line)
        if m:
            return m.group(1)
    raise ImageError(f"apt-cache names no kernel for {KERNEL_META_PACKAGE}")


# --------------------------------------------------------------------------- modules


def parse_kernel_config(text: str) -> dict[str, str]:
    """``CONFIG_X=y`` lines of a kernel ``config-*`` file as ``{"CONFIG_X": "y"}``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value.strip('"')
    return out


def filesystem_modules(config: Mapping[str, str]) -> list[str]:
    """Modules needed to mount the ext2 data disk ([] when the kernel has it built in)."""
    if config.get("CONFIG_EXT2_FS") == "y":
        return []
    if config.get("CONFIG_EXT4_FS") == "y" and config.get("CONFIG_EXT4_USE_FOR_EXT2") == "y":
        return []
    if config.get("CONFIG_EXT2_FS") == "m":
        return ["ext2"]
    if config.get("CONFIG_EXT4_FS") == "m" and config.get("CONFIG_EXT4_USE_FOR_EXT2") == "y":
        return ["ext4"]
    raise ImageError("the kernel cannot mount ext2 (neither EXT2_FS nor EXT4_USE_FOR_EXT2)")


def module_load_order(roots: Sequence[str], depends: Mapping[str, Sequence[str]]) -> list[str]:
    """Order ``roots`` and everything they depend on so each module follows its dependencies.

    Depth-first, dependencies in the order ``modinfo`` lists them, roots in the
    order given: the result is deterministic. Raises ``ImageError`` on a cycle
    or a module missing from ``depends``.
    """
    order: list[str] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(mod: str) -> None:
        if mod in done:
            return
        if mod in visiting:
            cycle = " -> ".join([*visiting[visiting.index(mod):], mod])
            raise ImageError(f"module dependency cycle: {cycle}")
        if mod not in depends:
            raise ImageError(f"module {mod} not found in the kernel package")
        visiting.append(mod)
        for dep in depends[mod]:
            visit(dep)
        visiting.pop()
        done.add(mod)
        order.append(mod)

    for root in roots:
        visit(root)
    return order


def _module_name(path: Path) -> str:
    name = path.name.split(".ko")[0]
    return name.replace("-", "_")


def _index_modules(modules_dir: Path) -> dict[str, Path]:
    """Module name -> .ko file (possibly .ko.xz/.ko.gz/.ko.zst) under lib/modules/<ver>/."""
    index: dict[str, Path] = {}
    for path in sorted(modules_dir.rglob("*.ko*")):
        if re.search(r"\.ko(\.(xz|gz|zst))?$", path.name):
            index[_module_name(path)] = path
    return index


def _parse_modinfo_depends(text: str) -> list[str]:
    return [d.replace("-", "_") for d in text.strip().split(",") if d]


def _resolve_modules(roots: Sequence[str], index: Mapping[str, Path]) -> list[str]:
    """Ask ``modinfo -F depends`` about every module reachable from ``roots``."""
    depends: dict[str, list[str]] = {}
    todo = list(roots)
    while todo:
        mod = todo.pop()
        if mod in depends or mod not in index:
            continue  # unknown modules are reported by module_load_order
        depends[mod] = _parse_modinfo_depends(
            _run(["modinfo", "-F", "depends", str(index[mod])], what=f"modinfo {mod}"))
        todo.extend(depends[mod])
    return module_load_order(roots, depends)


def _module_bytes(path: Path) -> bytes:
    """A module as a plain ELF .ko: busybox insmod cannot read compressed ones."""
    try:
        if path.name.endswith(".ko"):
            return path.read_bytes()
        if path.name.endswith(".ko.xz"):
            return lzma.decompress(path.read_bytes())
        if path.name.endswith(".ko.gz"):
            return gzip.decompress(path.read_bytes())
    except (OSError, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise ImageError(f"cannot read module {path.name}: {exc}") from exc
    if path.name.endswith(".ko.zst"):
        return _run_bytes(["zstd", "-dc", str(path)], what=f"zstd -d {path.name}")
    raise ImageError(f"unknown module format: {path.name}")


# --------------------------------------------------------------------------- cpio


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc archive. ``mode`` includes the file type bits."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def directory(cls, name: str) -> CpioEntry:
        return cls(name, stat.S_IFDIR | 0o755)

    @classmethod
    def file(cls, name: str, data: bytes, executable: bool = False) -> CpioEntry:
        return cls(name, stat.S_IFREG | (0o755 if executable else 0o644), data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return cls(name, stat.S_IFCHR | perm, rdev=(major, minor))


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A "newc" (SVR4, no CRC) cpio archive, as the kernel unpacks an initramfs.

    Written here rather than with ``cpio``: device nodes need no root and no
    mknod, owners are 0, mtimes are 0, so the same inputs give the same bytes.
    Parent directories must come before their contents (the caller's order is kept).
    """

    def pad4(n: int) -> bytes:
        return b"\0" * (-n % 4)

    out = bytearray()
    ino = 0
    for entry in [*entries, CpioEntry("TRAILER!!!", 0)]:
        ino += 1
        name = entry.name.lstrip("/").encode() + b"\0"
        fields = (ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0,
                  entry.rdev[0], entry.rdev[1], len(name), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += header + name + pad4(len(header) + len(name))
        out += entry.data + pad4(len(entry.data))
    return bytes(out)


# --------------------------------------------------------------------------- subprocesses


def _run_bytes(cmd: Sequence[str], *, what: str, cwd: Path | None = None) -> bytes:
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, check=True, timeout=600)
    except FileNotFoundError as exc:
        raise ImageError(f"{what}: {cmd[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        tail = exc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise ImageError(f"{what} failed: {' / '.join(tail) or f'exit {exc.returncode}'}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what} timed out") from exc
    return proc.stdout


def _run(cmd: Sequence[str], *, what: str, cwd: Path | None = None) -> str:
    return _run_bytes(cmd, what=what, cwd=cwd).decode(errors="replace")


# --------------------------------------------------------------------------- kernel package


def _cached_debs(cache_dir: Path) -> list[Path]:
    """Kernel .debs already downloaded, newest first."""
    debs = [p for p in cache_dir.glob("linux-image-*-cloud-amd64_*.deb") if p.is_file()]
    return sorted(debs, key=lambda p: p.stat().st_mtime, reverse=True)


def _fetch_kernel_deb(cache_dir: Path, log: Log, *, refresh: bool) -> Path:
    """The kernel .deb: from the cache (no apt at all) unless ``refresh``, else apt."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not refresh and (cached := _cached_debs(cache_dir)):
        return cached[0]

    def depends() -> str:
        return parse_apt_depends(_run(["apt-cache", "depends", KERNEL_META_PACKAGE],
                                      what="apt-cache depends"))

    def download(pkg: str) -> None:
        # The sandbox user _apt cannot write into our cache dir; we do not need it.
        _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", pkg],
             what=f"apt-get download {pkg}", cwd=cache_dir)

    try:
        pkg = depends()
    except ImageError:
        log("apt lists missing or stale: apt-get update")
        _run(["apt-get", "update"], what="apt-get update")
        pkg = depends()
    matching = [p for p in _cached_debs(cache_dir) if p.name.startswith(pkg + "_")]
    if matching:
        return matching[0]
    log(f"downloading {pkg}")
    try:
        download(pkg)
    except ImageError:
        log("download failed: apt-get update and retry")
        _run(["apt-get", "update"], what="apt-get update")
        download(pkg)
    matching = [p for p in _cached_debs(cache_dir) if p.name.startswith(pkg + "_")]
    if not matching:
        raise ImageError(f"apt-get download {pkg} left no .deb in {cache_dir}")
    return matching[0]


def _unpack_kernel(deb: Path, kernel_dir: Path, log: Log) -> Path:
    """Unpack ``deb`` into ``kernel_dir`` (reused if it holds this .deb); returns it."""
    stamp = kernel_dir / ".unpacked-from"
    if stamp.exists() and stamp.read_text() == deb.name:
        return kernel_dir
    log(f"unpacking {deb.name}")
    if kernel_dir.exists():
        shutil.rmtree(kernel_dir)
    kernel_dir.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(kernel_dir)], what=f"dpkg-deb -x {deb.name}")
    stamp.write_text(deb.name)
    return kernel_dir


# --------------------------------------------------------------------------- build


@dataclass
class _Manifest:
    digest: str
    kernel_version: str
    modules: list[str] = field(default_factory=list)
    inputs: dict[str, object] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> _Manifest | None:
        try:
            raw = json.loads(path.read_text())
            return cls(digest=raw["digest"], kernel_version=raw["kernel_version"],
                       modules=list(raw.get("modules", [])), inputs=dict(raw.get("inputs", {})))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or unreadable: rebuild


def _image_from(image_dir: Path, manifest: _Manifest) -> GuestImage:
    return GuestImage(kernel=image_dir / "vmlinuz", initrd=image_dir / "initrd.gz",
                      kernel_version=manifest.kernel_version, digest=manifest.digest)


def _compile_guestd(src: Path, out: Path) -> bytes:
    _run(["gcc", "-static", "-O2", "-s", "-Wall", "-Wextra", "-o", str(out), str(src)],
         what="gcc guestd.c")
    return out.read_bytes()


def _initramfs_entries(*, busybox: Path, init: bytes, guestd: bytes,
                       modules: Sequence[tuple[str, bytes]],
                       programs: Sequence[Path] = ()) -> list[CpioEntry]:
    entries = [CpioEntry.directory(d) for d in (
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp",
        "etc", "lib", "lib/modules", "data", "www")]
    # The kernel opens /dev/console for init before devtmpfs is mounted.
    entries.append(CpioEntry.char_device("dev/console", 5, 1))
    entries.append(CpioEntry.file("bin/busybox", busybox.read_bytes(), executable=True))
    # Applet symlinks made here, not with `busybox --install` at boot: less to do
    # under TCG and the image says what is in it.
    applets = _run([str(busybox), "--list-full"], what="busybox --list-full").split()
    for applet in sorted(set(applets)):
        if applet != "bin/busybox":
            entries.append(CpioEntry.symlink(applet, "/bin/busybox"))
    entries.append(CpioEntry.file("init", init, executable=True))
    entries.append(CpioEntry.file("bin/guestd", guestd, executable=True))
    # Dynamically linked programs at the host's paths (the loader finds its libraries
    # there). Their directories first; the usr-merged host's /lib is a directory here.
    made = {e.name for e in entries}
    for path in programs:
        rel = path.relative_to("/")
        for parent in reversed(rel.parents[:-1]):
            if str(parent) not in made:
                made.add(str(parent))
                entries.append(CpioEntry.directory(str(parent)))
        entries.append(CpioEntry.file(str(rel), path.read_bytes(), executable=True))
    for name, data in modules:
        entries.append(CpioEntry.file(f"lib/modules/{name}.ko", data))
    order = "".join(f"{name}\n" for name, _ in modules)
    entries.append(CpioEntry.file("etc/modules.order", order.encode()))
    return entries


def build_image(build_dir: Path | None = None, *, force: bool = False,
                log: Callable[[str], None] | None = None) -> GuestImage:
    """Build (or reuse) the guest image under ``build_dir`` (default ``default_build_dir()``).

    Returns at once when ``build_dir/image/manifest.json`` matches the inputs.
    ``force`` re-resolves the kernel with apt and rebuilds. Raises ``ImageError``.
    """
    build_dir = (build_dir or default_build_dir()).resolve()
    say: Log = log or (lambda _msg: None)
    image_dir = build_dir / "image"
    with locked(build_dir / ".image.lock"):
        deb = _fetch_kernel_deb(build_dir / "cache", say, refresh=force)
        inputs = gather_inputs(deb, GUEST_SOURCE_DIR, BUSYBOX)
        digest = inputs.digest()
        manifest = _Manifest.load(image_dir / "manifest.json")
        if (not force and manifest is not None and manifest.digest == digest
                and (image_dir / "vmlinuz").is_file() and (image_dir / "initrd.gz").is_file()):
            return _image_from(image_dir, manifest)

        version = kernel_version_from_deb(deb.name)
        say(f"building guest image (kernel {version})")
        kernel_root = _unpack_kernel(deb, build_dir / "kernel", say)
        vmlinuz = kernel_root / "boot" / f"vmlinuz-{version}"
        config_file = kernel_root / "boot" / f"config-{version}"
        modules_dir = kernel_root / "lib" / "modules" / version
        for needed in (vmlinuz, config_file, modules_dir):
            if not needed.exists():
                raise ImageError(f"{deb.name} has no {needed.relative_to(kernel_root)}")

        config = parse_kernel_config(config_file.read_text())
        roots = [*MODULE_ROOTS, *filesystem_modules(config)]
        index = _index_modules(modules_dir)
        order = _resolve_modules(roots, index)
        say(f"modules: {', '.join(order)}")
        modules = [(name, _module_bytes(index[name])) for name in order]

        image_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=build_dir) as tmp:
            say("compiling guestd")
            guestd = _compile_guestd(GUEST_SOURCE_DIR / "guestd.c", Path(tmp) / "guestd")
        entries = _initramfs_entries(busybox=BUSYBOX, init=(GUEST_SOURCE_DIR / "init").read_bytes(),
                                     guestd=guestd, modules=modules,
                                     programs=program_files(E2FSCK))
        initrd = gzip.compress(newc_archive(entries), compresslevel=6, mtime=0)

        atomic_write(image_dir / "vmlinuz", vmlinuz.read_bytes())
        atomic_write(image_dir / "initrd.gz", initrd)
        manifest = _Manifest(digest=digest, kernel_version=version, modules=order,
                             inputs=asdict(inputs))
        atomic_write(image_dir / "manifest.json",
                      (json.dumps(asdict(manifest), indent=2) + "\n").encode())
        say(f"guest image ready: {image_dir} (initrd {len(initrd) // 1024} KiB)")
        return _image_from(image_dir, manifest)


# --------------------------------------------------------------------------- data disk


def create_data_disk(path: Path, size_mib: int = 64, tree: Path | None = None,
                     fstype: str = "ext2") -> None:
    """Create a raw ext2 data disk holding an empty ``/integrity.log`` (beside the files
    of ``tree``, when given: a directory, which gets the log too); ``fstype="ext4"``
    makes it journaled (a root filesystem a guest changes throughout).

    The file is created on the host by mkfs (``-d`` populates it), so the guest
    finds the log in place and the host can read it back even before the first boot.
    """
    if size_mib < 4:
        raise ImageError(f"data disk of {size_mib} MiB is too small")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.truncate(size_mib * 1024 * 1024)
    except OSError as exc:
        raise ImageError(f"cannot create data disk {path}: {exc}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        root = tree or Path(tmp)
        (root / INTEGRITY_LOG_NAME).touch()
        _run([f"mkfs.{fstype}", "-F", "-q", "-L", "wanmig-data", "-d", str(root), str(path)],
             what=f"mkfs.{fstype} {path.name} ({size_mib} MiB: large enough?)")


def read_integrity_log(disk: Path) -> bytes:
    """The guest's integrity log, read from the ext2 data disk on the host.

    Uses debugfs, which reads the filesystem without mounting it, so it works on
    a disk that was not cleanly unmounted or that a QEMU still has open (what
    the guest wrote with O_DSYNC has reached the file).
    """
    disk = Path(disk)
    if not disk.is_file():
        raise ImageError(f"data disk {disk} does not exist")
    try:
        proc = subprocess.run(["debugfs", "-R", f"cat /{INTEGRITY_LOG_NAME}", str(disk)],
                              capture_output=True, check=True, timeout=120)
    except FileNotFoundError as exc:
        raise ImageError("debugfs is not installed (e2fsprogs)") from exc
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise ImageError(f"debugfs could not read {disk}") from exc
    # debugfs exits 0 even when it fails; the reason is on stderr.
    err = proc.stderr.decode(errors="replace")
    if "not found" in err or "Bad magic" in err or "while opening filesystem" in err:
        line = next((ln for ln in err.splitlines() if not ln.startswith("debugfs ")),
                    err.strip())
        raise ImageError(f"cannot read /{INTEGRITY_LOG_NAME} from {disk}: {line.strip()}")
    return proc.stdout
