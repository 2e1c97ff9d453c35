"""Unit tests for the pure parts of wanmig.qemu.image (no apt, no QEMU)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from wanmig.errors import ConfigError, ImageError
from wanmig.qemu import image
from wanmig.qemu.image import (
    READY_MARKER,
    CpioEntry,
    GuestImage,
    ImageInputs,
    build_image,
    filesystem_modules,
    gather_inputs,
    kernel_version_from_deb,
    module_load_order,
    newc_archive,
    parse_apt_depends,
    parse_kernel_config,
    parse_ldd,
    render_cmdline,
)

# What `modinfo -F depends` says for the Debian 6.1 cloud kernel.
CLOUD_DEPENDS: dict[str, list[str]] = {
    "virtio_ring": [],
    "virtio": ["virtio_ring"],
    "virtio_pci_modern_dev": [],
    "virtio_pci_legacy_dev": [],
    "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"],
    "failover": [],
    "net_failover": ["failover"],
    "virtio_net": ["virtio_ring", "virtio", "net_failover"],
    "virtio_blk": ["virtio", "virtio_ring"],
    "virtio_console": ["virtio", "virtio_ring"],
}


# ----------------------------------------------------------------------------- modules


def test_load_order_puts_every_dependency_first() -> None:
    order = module_load_order(image.MODULE_ROOTS, CLOUD_DEPENDS)
    assert sorted(order) == sorted(CLOUD_DEPENDS)
    assert len(order) == len(set(order))
    for mod, deps in CLOUD_DEPENDS.items():
        for dep in deps:
            assert order.index(dep) < order.index(mod), (dep, mod)


def test_load_order_is_deterministic() -> None:
    assert module_load_order(["virtio_pci", "virtio_net", "virtio_blk"], CLOUD_DEPENDS) == [
        "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio",
        "virtio_pci", "failover", "net_failover", "virtio_net", "virtio_blk",
    ]


def test_load_order_only_includes_what_roots_need() -> None:
    assert module_load_order(["virtio_blk"], CLOUD_DEPENDS) == ["virtio_ring", "virtio", "virtio_blk"]


def test_load_order_rejects_cycle() -> None:
    with pytest.raises(ImageError, match="cycle: a -> b -> a"):
        module_load_order(["a"], {"a": ["b"], "b": ["a"]})


def test_load_order_rejects_unknown_module() -> None:
    with pytest.raises(ImageError, match="nope"):
        module_load_order(["virtio_blk", "nope"], CLOUD_DEPENDS)


def test_kernel_config_and_filesystem_modules() -> None:
    cfg = parse_kernel_config(
        "# comment\nCONFIG_EXT4_FS=y\nCONFIG_EXT4_USE_FOR_EXT2=y\n"
        'CONFIG_MODULE_SIG_HASH="sha256"\n# CONFIG_EXT2_FS is not set\n')
    assert cfg["CONFIG_MODULE_SIG_HASH"] == "sha256"
    assert "CONFIG_EXT2_FS" not in cfg
    assert filesystem_modules(cfg) == []
    assert filesystem_modules({"CONFIG_EXT2_FS": "y"}) == []
    assert filesystem_modules({"CONFIG_EXT2_FS": "m"}) == ["ext2"]
    assert filesystem_modules({"CONFIG_EXT4_FS": "m", "CONFIG_EXT4_USE_FOR_EXT2": "y"}) == ["ext4"]
    with pytest.raises(ImageError):
        filesystem_modules({"CONFIG_EXT4_FS": "y"})


# ----------------------------------------------------------------------------- apt names


def test_parse_apt_depends() -> None:
    text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
    assert parse_apt_depends(text) == "linux-image-6.1.0-56-cloud-amd64"
    with pytest.raises(ImageError):
        parse_apt_depends("linux-image-cloud-amd64\n")


def test_parse_ldd_names_every_library_and_the_loader() -> None:
    text = ("\tlinux-vdso.so.1 (0x00007ffd5a1f2000)\n"
            "\tlibext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x00007f0345230000)\n"
            "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0344fd5000)\n"
            "\t/lib64/ld-linux-x86-64.so.2 (0x00007f0345301000)\n")
    assert parse_ldd(text) == [Path("/lib/x86_64-linux-gnu/libext2fs.so.2"),
                               Path("/lib/x86_64-linux-gnu/libc.so.6"),
                               Path("/lib64/ld-linux-x86-64.so.2")]
    with pytest.raises(ImageError, match="libe2p.so.2 => not found"):
        parse_ldd("\tlibe2p.so.2 => not found\n")


def test_initramfs_holds_a_program_with_its_directories(tmp_path: Path) -> None:
    lib = tmp_path / "lib" / "x86_64-linux-gnu" / "libx.so.1"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF lib")
    entries = image._initramfs_entries(busybox=Path("/bin/busybox"), init=b"#!/bin/sh\n",
                                       guestd=b"g", modules=[], programs=[lib])
    names = [e.name for e in entries]
    rel = str(lib.relative_to("/"))
    assert names.count(rel) == 1 and names.count("lib") == 1
    for parent in Path(rel).parents[:-1]:
        assert names.index(str(parent)) < names.index(rel)


def test_kernel_version_from_deb() -> None:
    name = "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
    assert kernel_version_from_deb(name) == "6.1.0-56-cloud-amd64"
    with pytest.raises(ImageError):
        kernel_version_from_deb("busybox_1.35_amd64.deb")


# ----------------------------------------------------------------------------- cmdline


def test_cmdline_has_console_and_settings() -> None:
    line = render_cmdline(ip_cidr="10.77.0.10/24", gateway="10.77.0.1", name="vm1")
    args = line.split()
    assert "console=ttyS0" in args
    assert "wanmig.ip=10.77.0.10/24" in args
    assert "wanmig.gw=10.77.0.1" in args
    assert "wanmig.name=vm1" in args
    assert "quiet" in args  # errors stay visible: loglevel lets err and worse through
    assert "panic=-1" not in args


def test_cmdline_without_gateway() -> None:
    args = render_cmdline(ip_cidr="10.0.2.15/24").split()
    assert not any(a.startswith("wanmig.gw=") for a in args)
    assert "wanmig.name=vm" in args


def test_guest_image_cmdline_delegates() -> None:
    img = GuestImage(Path("/k"), Path("/i"), "6.1.0-56-cloud-amd64", "d")
    assert img.cmdline(ip_cidr="10.0.0.2/8", name="a") == render_cmdline(ip_cidr="10.0.0.2/8", name="a")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"ip_cidr": "10.77.0.10"}, "ip_cidr"),
    ({"ip_cidr": "10.77.0.300/24"}, "ip_cidr"),
    ({"ip_cidr": "fd00::1/64"}, "ip_cidr"),
    ({"ip_cidr": "10.77.0.10/24", "gateway": "gw"}, "gateway"),
    ({"ip_cidr": "10.77.0.10/24", "name": "bad name"}, "name"),
    ({"ip_cidr": "10.77.0.10/24", "name": "-x"}, "name"),
])
def test_cmdline_rejects_bad_values(kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        render_cmdline(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(("dirty", "rendered"), [
    ((64, 20), "64:20"),
    ((64, 20.0), "64:20"),
    ((8, 2.5), "8:2.5"),
    ((1, 0), "1:0"),
    ((65536, 10000), "65536:10000"),
    ((32, 0.1), "32:0.1"),
])
def test_cmdline_renders_dirty_compactly(dirty: tuple[int, float], rendered: str) -> None:
    args = render_cmdline(ip_cidr="10.0.2.15/24", dirty=dirty).split()
    assert f"wanmig.dirty={rendered}" in args
    assert float(rendered.split(":")[1]) == dirty[1]  # guestd's strtod reads the same rate


def test_cmdline_without_dirty_has_no_dirtier() -> None:
    assert "wanmig.dirty" not in render_cmdline(ip_cidr="10.0.2.15/24")
    assert "wanmig.dirty" not in render_cmdline(ip_cidr="10.0.2.15/24", dirty=None)


def test_guest_image_cmdline_passes_dirty_through() -> None:
    img = GuestImage(Path("/k"), Path("/i"), "6.1.0-56-cloud-amd64", "d")
    assert "wanmig.dirty=16:2.5" in img.cmdline(ip_cidr="10.0.0.2/8", dirty=(16, 2.5)).split()


@pytest.mark.parametrize("dirty", [
    (0, 20), (65537, 20), (-1, 20), (32.0, 20), (True, 20), ("32", 20),
    (32, -0.5), (32, 10000.5), (32, float("nan")), (32, float("inf")), (32, "20"), (32, True),
    (32,), (32, 20, 1), "64:20", 64,
])
def test_cmdline_rejects_bad_dirty(dirty: object) -> None:
    with pytest.raises(ConfigError) as info:
        render_cmdline(ip_cidr="10.0.2.15/24", dirty=dirty)  # type: ignore[arg-type]
    assert info.value.field == "dirty"


def test_dirty_bounds_match_guestd() -> None:
    source = (image.GUEST_SOURCE_DIR / "guestd.c").read_text()
    assert f"#define MAX_DIRTY_MIB {image.DIRTY_MAX_MIB}\n" in source
    assert f"#define MAX_DIRTY_MBPS {image.DIRTY_MAX_MBPS:.1f}\n" in source
    init = (image.GUEST_SOURCE_DIR / "init").read_text()
    assert "wanmig.dirty=*)" in init and 'fail "dirty workload"' in init


def test_init_serves_the_web_load_blob() -> None:
    init = (image.GUEST_SOURCE_DIR / "init").read_text()
    assert 'head -c 262144 /dev/urandom > "$www/blob.bin"' in init
    # busybox's httpd serves /www; on the Debian root nginx serves /run/www (tmpfs)
    assert "www=/www" in init and "www=/run/www" in init and "root $www;" in init


def test_ready_marker_matches_init() -> None:
    init = (image.GUEST_SOURCE_DIR / "init").read_text()
    assert 'say "ready"' in init and "wanmig-guest: $*" in init
    assert READY_MARKER == "wanmig-guest: ready"


# ----------------------------------------------------------------------------- cache key


def _inputs() -> ImageInputs:
    return ImageInputs(kernel_deb="linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb",
                       kernel_deb_size=1000, busybox_sha256="a" * 64,
                       init_sha256="b" * 64, guestd_sha256="c" * 64)


def test_digest_is_stable() -> None:
    assert _inputs().digest() == _inputs().digest()


@pytest.mark.parametrize("change", [
    {"kernel_deb": "linux-image-6.1.0-57-cloud-amd64_6.1.200-1_amd64.deb"},
    {"kernel_deb_size": 1001},
    {"busybox_sha256": "d" * 64},
    {"init_sha256": "e" * 64},
    {"guestd_sha256": "f" * 64},
    {"e2fsck_sha256": "0" * 64},
    {"module_roots": ("virtio_pci", "virtio_net")},
    {"layout_version": 99},
])
def test_digest_changes_with_every_input(change: dict[str, Any]) -> None:
    assert dataclasses.replace(_inputs(), **change).digest() != _inputs().digest()


def _fake_sources(tmp_path: Path) -> tuple[Path, Path, Path]:
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "init").write_text("#!/bin/sh\n")
    (guest / "guestd.c").write_text("int main(void) { return 0; }\n")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF busybox")
    cache = tmp_path / "build" / "cache"
    cache.mkdir(parents=True)
    deb = cache / "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
    deb.write_bytes(b"x" * 100)
    return guest, busybox, deb


def test_gather_inputs_tracks_file_contents(tmp_path: Path) -> None:
    guest, busybox, deb = _fake_sources(tmp_path)
    first = gather_inputs(deb, guest, busybox).digest()
    (guest / "init").write_text("#!/bin/sh\necho changed\n")
    second = gather_inputs(deb, guest, busybox).digest()
    (guest / "guestd.c").write_text("int main(void) { return 1; }\n")
    third = gather_inputs(deb, guest, busybox).digest()
    busybox.write_bytes(b"\x7fELF other busybox")
    fourth = gather_inputs(deb, guest, busybox).digest()
    deb.write_bytes(b"x" * 101)
    fifth = gather_inputs(deb, guest, busybox).digest()
    assert len({first, second, third, fourth, fifth}) == 5


def test_gather_inputs_missing_file_is_image_error(tmp_path: Path) -> None:
    guest, busybox, deb = _fake_sources(tmp_path)
    (guest / "guestd.c").unlink()
    with pytest.raises(ImageError) as info:
        gather_inputs(deb, guest, busybox)
    assert isinstance(info.value.__cause__, OSError)


def test_cached_build_returns_without_apt_or_tools(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    guest, busybox, deb = _fake_sources(tmp_path)
    monkeypatch.setattr(image, "GUEST_SOURCE_DIR", guest)
    monkeypatch.setattr(image, "BUSYBOX", busybox)

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"cached build ran a subprocess: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    build = tmp_path / "build"
    out = build / "image"
    out.mkdir()
    (out / "vmlinuz").write_bytes(b"k")
    (out / "initrd.gz").write_bytes(b"i")
    digest = gather_inputs(deb, guest, busybox).digest()
    (out / "manifest.json").write_text(json.dumps(
        {"digest": digest, "kernel_version": "6.1.0-56-cloud-amd64", "modules": []}))

    img = build_image(build)
    assert img == GuestImage(out / "vmlinuz", out / "initrd.gz", "6.1.0-56-cloud-amd64", digest)

    # Any changed input misses the cache: the build then needs tools (here: refused).
    (guest / "init").write_text("#!/bin/sh\n# changed\n")
    with pytest.raises(AssertionError, match="ran a subprocess"):
        build_image(build)


def test_default_build_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANMIG_BUILD_DIR", str(tmp_path / "b"))
    assert image.default_build_dir() == tmp_path / "b"
    monkeypatch.delenv("WANMIG_BUILD_DIR")
    monkeypatch.chdir(tmp_path)
    assert image.default_build_dir() == tmp_path / "build"


# ----------------------------------------------------------------------------- cpio


def _read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """Minimal newc reader, independent of the writer."""
    out: list[tuple[str, int, bytes, tuple[int, int]]] = []
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701", pos
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos: pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, mode, body, (rmaj, rmin)))


def test_newc_archive_round_trip() -> None:
    entries = [
        CpioEntry.directory("bin"),
        CpioEntry.file("bin/x", b"hello", executable=True),
        CpioEntry.symlink("bin/sh", "/bin/busybox"),
        CpioEntry.char_device("dev/console", 5, 1),
        CpioEntry.file("/etc/odd", b"abc"),  # leading slash dropped
    ]
    got = _read_newc(newc_archive(entries))
    assert [g[0] for g in got] == ["bin", "bin/x", "bin/sh", "dev/console", "etc/odd"]
    assert stat.S_ISDIR(got[0][1])
    assert got[1][2] == b"hello" and got[1][1] & 0o777 == 0o755
    assert stat.S_ISLNK(got[2][1]) and got[2][2] == b"/bin/busybox"
    assert stat.S_ISCHR(got[3][1]) and got[3][3] == (5, 1)
    assert newc_archive(entries) == newc_archive(entries)  # reproducible


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_newc_archive_readable_by_cpio() -> None:
    data = gzip.decompress(gzip.compress(newc_archive([
        CpioEntry.directory("a"), CpioEntry.file("a/b", b"x" * 5)])))
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True,
                             check=True).stdout.decode().split()
    assert listing == ["a", "a/b"]


# ----------------------------------------------------------------------------- data disk


@pytest.mark.skipif(shutil.which("mkfs.ext2") is None or shutil.which("debugfs") is None,
                    reason="e2fsprogs not installed")
def test_data_disk_starts_with_empty_log(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    image.create_data_disk(disk, size_mib=8)
    assert disk.stat().st_size == 8 * 1024 * 1024
    assert image.read_integrity_log(disk) == b""


@pytest.mark.skipif(shutil.which("debugfs") is None, reason="e2fsprogs not installed")
def test_read_integrity_log_on_non_ext2_is_image_error(tmp_path: Path) -> None:
    disk = tmp_path / "junk.raw"
    disk.write_bytes(b"\0" * 65536)
    with pytest.raises(ImageError, match="cannot read"):
        image.read_integrity_log(disk)
    with pytest.raises(ImageError, match="does not exist"):
        image.read_integrity_log(tmp_path / "missing.raw")


def test_cmdline_names_the_root_to_switch_to() -> None:
    assert "wanmig.root" not in render_cmdline(ip_cidr="10.0.2.15/24")
    assert "wanmig.root=debian" in render_cmdline(ip_cidr="10.0.2.15/24", root="debian").split()
    with pytest.raises(ConfigError) as info:
        render_cmdline(ip_cidr="10.0.2.15/24", root="/dev/sda1")
    assert info.value.field == "root"
