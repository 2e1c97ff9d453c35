"""Verify mode's page-by-page comparison of two RAM files (pure file work)."""

from pathlib import Path

from wanmig.memory.verify import PAGE, compare_ram, corrupt_page, guest_address

RAM = 4 * 2**20


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    data = bytes(range(256)) * (RAM // 256)
    a, b = tmp_path / "a.ram", tmp_path / "b.ram"
    a.write_bytes(data)
    b.write_bytes(data)
    return a, b


def test_equal_copies_match(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    result = compare_ram(a, b, RAM)
    assert result.match and result.pages == RAM // PAGE and result.differing == 0
    assert result.integrity_fields()["memory_pages_differing"] == 0


def test_each_differing_page_is_counted_and_located(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    with b.open("r+b") as f:
        for page in (3, 300, 301):
            f.seek(page * PAGE + 17)
            f.write(b"\xff\x00")
    result = compare_ram(a, b, RAM)
    assert not result.match and result.differing == 3
    assert result.first_addresses == (3 * PAGE, 300 * PAGE, 301 * PAGE)
    assert "3 of 1024 guest RAM pages differ" in result.describe()
    assert result.integrity_fields()["memory_first_differing"] == ["0x3000", "0x12c000",
                                                                   "0x12d000"]


def test_corrupt_page_changes_one_nonzero_page(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    with b.open("r+b") as f:  # zero pages are skipped: the fault must change real data
        f.write(bytes(2 * 2**20))
    with a.open("r+b") as f:
        f.write(bytes(2 * 2**20))
    address = corrupt_page(b, RAM)
    assert address == 2 * 2**20
    result = compare_ram(a, b, RAM)
    assert result.differing == 1 and result.first_addresses == (address,)


def test_guest_addresses_skip_the_pci_hole() -> None:
    big = 6 * 2**30
    assert guest_address(5, big) == 5
    assert guest_address(3 * 2**30, big) == 4 * 2**30
