"""The run registry's files: the run directory (sockets, disks, RAM dumps) is private."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from wanmig import registry as registry_module
from wanmig.registry import Registry


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 000: what mkdir's own mode argument cannot be trusted with."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_state_and_run_dirs_are_created_0700(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             permissive_umask: None) -> None:
    state = tmp_path / "run" / "wanmig"
    monkeypatch.setattr(registry_module, "STATE_DIR", state)
    reg = Registry("r1")
    assert mode(state) == 0o700
    assert mode(reg.run_dir) == 0o700 and reg.run_dir == state / "r1"
    assert json.loads(reg.path.read_text())["run_id"] == "r1"
    reg.close()
    assert not reg.run_dir.exists() and not reg.path.exists()


def test_an_existing_state_dir_is_left_alone_a_run_dir_tightened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, permissive_umask: None) -> None:
    # WANMIG_STATE_DIR may name a directory wanmig does not own: never chmodded
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    monkeypatch.setattr(registry_module, "STATE_DIR", shared)
    leftover = shared / "kvmprobe"  # a crashed probe's run dir, made by an older wanmig
    leftover.mkdir(mode=0o755)
    reg = Registry("kvmprobe")
    assert mode(shared) == 0o1777
    assert mode(reg.run_dir) == 0o700
    reg.close()


def test_guest_ram_files_are_private_and_never_kept(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    permissive_umask: None) -> None:
    """Verify mode's RAM files hold the guest's memory: 0700, gone with the run even when
    the run directory is kept, and removed by ``wanmig clean`` after a crash."""
    monkeypatch.setattr(registry_module, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(registry_module, "MEMORY_DIR", tmp_path / "shm")
    reg = Registry("r2")
    ram = reg.memory_file("vm-a")
    assert ram == tmp_path / "shm" / "r2" / "vm-a.ram" and mode(ram.parent) == 0o700
    ram.write_bytes(b"guest")
    reg.close(keep_run_dir=True)
    assert not ram.parent.exists() and reg.run_dir.exists()

    crashed = Registry("r3")
    crashed.memory_file("vm-b").write_bytes(b"guest")
    crashed.owner_pid = 2**22 + 1  # no such process: the run's owner is gone
    crashed._save()
    os.utime(reg.run_dir, (1, 1))     # kept long ago; a fresh one is left alone
    fresh = tmp_path / "state" / "r4"
    fresh.mkdir()
    removed = registry_module.clean_leftovers()
    assert "run r3" in removed and not (tmp_path / "shm" / "r3").exists()
    assert "kept run directory r2" in removed and not reg.run_dir.exists()
    assert fresh.exists() and "kept run directory r4" not in removed
