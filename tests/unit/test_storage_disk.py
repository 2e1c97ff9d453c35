"""The local-disk helpers on real images: qemu-img, qemu-io, debugfs, e2fsck."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from wanmig.errors import StorageError
from wanmig.storage.disk import (LocalDisks, compare, disk_facts, fsck, image_format,
                                 read_log)

SIZE_MIB = 16


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _qemu_io(image: Path, command: str) -> None:
    _run("qemu-io", "-f", image_format(image), "-c", command, str(image))


@pytest.fixture
def disks(tmp_path: Path) -> LocalDisks:
    d = LocalDisks.at(tmp_path)
    asyncio.run(d.create(SIZE_MIB, target_on_base=False))
    return d


def test_layout_base_read_only_overlay_on_it_and_an_empty_target(disks: LocalDisks) -> None:
    assert disks.base.stat().st_mode & 0o222 == 0
    info = _run("qemu-img", "info", "-U", str(disks.source))
    assert f"backing file: {disks.base}" in info and "backing file format: raw" in info
    assert "backing file" not in _run("qemu-img", "info", "-U", str(disks.target))
    src, dst = asyncio.run(disk_facts(disks.source)), asyncio.run(disk_facts(disks.target))
    assert src.virtual_bytes == dst.virtual_bytes == SIZE_MIB * 2**20
    # the base's ext2 metadata is data; the overlay holds nothing yet
    assert src.allocated_bytes > 0 and src.top_bytes == 0
    assert src.allocated_bytes + src.zero_bytes == src.virtual_bytes
    assert dst.allocated_bytes == 0 and dst.zero_bytes == dst.virtual_bytes


def test_overlay_bytes_count_what_the_guest_wrote(disks: LocalDisks) -> None:
    _qemu_io(disks.source, "write -P 0xab 4M 256k")
    facts = asyncio.run(disk_facts(disks.source))
    assert facts.top_bytes == 256 * 1024


def test_compare_finds_the_first_differing_byte(disks: LocalDisks) -> None:
    assert asyncio.run(compare(disks.source, disks.base)).match
    _qemu_io(disks.source, "write -P 0x5a 1M 4k")
    result = asyncio.run(compare(disks.source, disks.base))
    assert not result.match and result.first_difference == 2**20


def test_compare_of_a_missing_image_is_a_storage_error(disks: LocalDisks) -> None:
    with pytest.raises(StorageError, match="compare"):
        asyncio.run(compare(disks.source, disks.base.with_name("missing.raw")))


def test_fsck_clean_base_and_lagging_bitmaps_are_benign(tmp_path: Path,
                                                        disks: LocalDisks) -> None:
    assert asyncio.run(fsck(disks.source)).clean
    raw = tmp_path / "lagging.raw"
    _run("qemu-img", "convert", "-O", "raw", str(disks.source), str(raw))
    (tmp_path / "payload").write_bytes(b"x" * 8192)
    _run("debugfs", "-w", "-R", f"write {tmp_path / 'payload'} payload", str(raw))
    block = _run("debugfs", "-R", "blocks payload", str(raw)).split()[0]
    # the file's block in use, its bit clear: what a guest's lazy bitmap write-back leaves
    _run("debugfs", "-w", "-R", f"freeb {block}", str(raw))
    result = asyncio.run(fsck(raw))
    assert result.clean, result.problems


def test_fsck_reports_structural_damage(tmp_path: Path, disks: LocalDisks) -> None:
    raw = tmp_path / "broken.raw"
    _run("qemu-img", "convert", "-O", "raw", str(disks.source), str(raw))
    _run("debugfs", "-w", "-R", "clri <2>", str(raw))   # the root directory's inode
    result = asyncio.run(fsck(raw))
    assert not result.clean
    assert any("oot" in p for p in result.problems), result.problems


def test_read_log_flattens_a_qcow2_chain(disks: LocalDisks) -> None:
    assert asyncio.run(read_log(disks.source)) == b""


def test_has_backing_reads_the_qcow2_header(disks: LocalDisks) -> None:
    from wanmig.storage.disk import has_backing
    assert has_backing(disks.source) and not has_backing(disks.target)
    assert not has_backing(disks.base)


def test_a_destination_without_room_is_refused_with_the_figures(tmp_path: Path) -> None:
    from wanmig.storage.disk import check_room
    check_room(tmp_path, 1 << 20)                      # this machine's /tmp has room
    with pytest.raises(StorageError, match=r"has \d+ MiB free; the disk needs \d+ MiB"):
        check_room(tmp_path, 1 << 60)                  # an exabyte does not fit anywhere


def test_fsck_takes_an_inode_lagging_its_last_append_as_benign(tmp_path: Path,
                                                               disks: LocalDisks) -> None:
    raw = tmp_path / "append.raw"
    _run("qemu-img", "convert", "-O", "raw", str(disks.source), str(raw))
    (tmp_path / "payload").write_bytes(b"x" * 8192)
    _run("debugfs", "-w", "-R", f"write {tmp_path / 'payload'} payload", str(raw))
    # the inode as it was before its last block was linked: size and count behind
    _run("debugfs", "-w", "-R", "sif payload size 4096", str(raw))
    _run("debugfs", "-w", "-R", "sif payload blocks 2", str(raw))
    result = asyncio.run(fsck(raw))
    assert result.clean, result.problems
    # an inode that claims more blocks than it has is damage
    _run("debugfs", "-w", "-R", "sif payload blocks 400", str(raw))
    result = asyncio.run(fsck(raw))
    assert not result.clean and any("i_blocks is 400" in p for p in result.problems)
