"""The QEMU command line and migration capability arguments (pure functions)."""

from pathlib import Path

import pytest

from wanmig.errors import MigrationError
from wanmig.memory import capability_args
from wanmig.qemu.image import GuestImage
from wanmig.qemu.process import VmConfig, qemu_argv, tail_lines

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
    argv = qemu_argv(_cfg(incoming=False, netns=None, accel="kvm"), Path("/run/x"))
    assert argv[0] == "qemu-system-x86_64" and "-incoming" not in argv
    assert argv[argv.index("-cpu") + 1] == "host"


def test_dirty_workload_reaches_the_kernel_command_line() -> None:
    append = qemu_argv(_cfg(dirty=(32, 2.5)), Path("/run/x"))
    assert "wanmig.dirty=32:2.5" in append[append.index("-append") + 1].split()
    plain = qemu_argv(_cfg(), Path("/run/x"))
    assert "wanmig.dirty" not in plain[plain.index("-append") + 1]


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
