"""The QEMU command line and migration capability arguments (pure functions)."""

from pathlib import Path

import pytest

from wanmig.errors import ConfigError, MigrationError
from wanmig.memory import capability_args
from wanmig.qemu.binary import QemuBinary, check_supported, parse_version
from wanmig.qemu.image import GuestImage
from wanmig.qemu.process import VmConfig, qemu_argv, tail_lines

QEMU10 = QemuBinary(path="/usr/bin/qemu-system-x86_64", version=(10, 0, 2),
                    banner="QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)")

IMAGE = GuestImage(kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd.gz"),
                   kernel_version="6.1.0-test", digest="d")


def _cfg(**kw: object) -> VmConfig:
    base = dict(name="vm-b", image=IMAGE, disk=Path("/r/disk.raw"), ram_mib=256,
                mac="52:54:00:77:00:10", tap="tap0", ip_cidr="10.77.0.10/24", accel="tcg",
                netns="wmx-b", incoming=True)
    base.update(kw)
    return VmConfig(**base)  # type: ignore[arg-type]


def test_destination_argv() -> None:
    argv = qemu_argv(_cfg(), Path("/run/x"))
    assert argv[:4] == ["ip", "netns", "exec", "wmx-b"]
    assert argv[argv.index("-accel") + 1] == "tcg" and argv[argv.index("-cpu") + 1] == "max"
    # -S: the destination stays paused after the stream until the engine sends cont
    assert argv[-3:] == ["-incoming", "defer", "-S"]
    assert "unix:/run/x/vm-b.qmp,server=on,wait=off" in argv
    assert any("ifname=tap0" in a for a in argv)
    assert any("mac=52:54:00:77:00:10" in a for a in argv)
    assert "wanmig.ip=10.77.0.10/24" in argv[argv.index("-append") + 1]


def test_source_argv_and_kvm() -> None:
    argv = qemu_argv(_cfg(incoming=False, netns=None, accel="kvm"), Path("/run/x"), QEMU10)
    assert argv[0] == "/usr/bin/qemu-system-x86_64" and "-incoming" not in argv
    assert argv[argv.index("-cpu") + 1] == "host"


def test_dirty_workload_reaches_the_kernel_command_line() -> None:
    append = qemu_argv(_cfg(dirty=(32, 2.5)), Path("/run/x"))
    assert "wanmig.dirty=32:2.5" in append[append.index("-append") + 1].split()
    plain = qemu_argv(_cfg(), Path("/run/x"))
    assert "wanmig.dirty" not in plain[plain.index("-append") + 1]


def test_disk_rewriter_and_image_format_reach_qemu() -> None:
    argv = qemu_argv(_cfg(disk=Path("/r/site-a/disk.qcow2"), disk_format="qcow2",
                          disk_backed=True, diskwrite=(16, 5.0)), Path("/run/x"))
    assert "wanmig.diskwrite=16:5" in argv[argv.index("-append") + 1].split()
    drive = argv[argv.index("-drive") + 1]
    assert "file=/r/site-a/disk.qcow2,format=qcow2" in drive and "node-name=disk0-format" in drive
    assert "file.node-name=disk0-file" in drive and "backing.node-name=disk0-base" in drive
    assert "format=raw" in qemu_argv(_cfg(), Path("/run/x"))[
        qemu_argv(_cfg(), Path("/run/x")).index("-drive") + 1]


def test_old_qemu_is_refused_with_how_to_get_10() -> None:
    assert parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)") \
        == (7, 2, 22)
    assert parse_version("QEMU emulator version 10.0.2") == (10, 0, 2)
    old = QemuBinary(path="/usr/bin/qemu-system-x86_64", version=(7, 2, 22), banner="7.2")
    with pytest.raises(ConfigError) as exc:
        check_supported(old)
    message = str(exc.value)
    assert "QEMU 7.2.22" in message and "10.0 or newer" in message
    assert "bookworm-backports" in message and "\n" not in message
    check_supported(QEMU10)
    check_supported(old, allow_old=True)  # research only: logged, not refused
    with pytest.raises(ConfigError):
        parse_version("not a qemu")


def test_firmware_dirs_and_file_backed_ram() -> None:
    unpacked = QemuBinary(path="/opt/q/qemu", version=(7, 2, 0), banner="", datadirs=("/opt/d",))
    argv = qemu_argv(_cfg(ram_file=Path("/dev/shm/wanmig/r/vm-b.ram")), Path("/run/x"), unpacked)
    assert argv[4:7] == ["/opt/q/qemu", "-L", "/opt/d"]
    backend = argv[argv.index("-object") + 1]
    assert backend == ("memory-backend-file,id=ram0,size=256M,"
                       "mem-path=/dev/shm/wanmig/r/vm-b.ram,share=on")
    assert argv[argv.index("-machine") + 1] == "memory-backend=ram0"
    assert "-object" not in qemu_argv(_cfg(), Path("/run/x"), QEMU10)


def test_unresolved_accel_refused() -> None:
    with pytest.raises(ValueError):
        qemu_argv(_cfg(accel="auto"), Path("/run/x"))


def test_capabilities_all_explicit() -> None:
    args = capability_args(["xbzrle", "events", "pause-before-switchover", "postcopy-ram"],
                           {"events", "pause-before-switchover"})
    assert args == [{"capability": "xbzrle", "state": False},
                    {"capability": "events", "state": True},
                    {"capability": "pause-before-switchover", "state": True},
                    {"capability": "postcopy-ram", "state": False}]
    with pytest.raises(MigrationError, match="multifd"):
        capability_args(["events"], {"multifd"})


def test_tail_lines_of_a_console_log(tmp_path: Path) -> None:
    log = tmp_path / "vm-b.console.log"
    log.write_bytes(b"boot\n" * 30 + b"list_del corruption \xff\n[ end trace ]\n\n")
    assert tail_lines(log, 2) == ["list_del corruption \ufffd", "[ end trace ]"]
    assert len(tail_lines(log, 20)) == 20
    assert tail_lines(tmp_path / "missing.log", 5) == []
