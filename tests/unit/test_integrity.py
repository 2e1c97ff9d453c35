"""Unit tests for wanmig.integrity, plus cross-checks against the real guestd writer and
memory dirtier (built here with gcc and run as a host process)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wanmig.integrity import (
    MEMCHECK_PAGE,
    RECORD_SIZE,
    BadPage,
    MemCheck,
    check_log,
    format_record,
    integrity_problems,
    memcheck_fields,
    memcheck_from_console,
    page_checksum,
    parse_record,
)
from wanmig.record import IntegrityResult

GUESTD_C = Path(__file__).resolve().parents[2] / "src" / "wanmig" / "guest" / "guestd.c"


def log_of(seqs: list[int], start_ms: int = 1000, step_ms: int = 10) -> bytes:
    return b"".join(format_record(s, start_ms + i * step_ms) for i, s in enumerate(seqs))


def test_record_format() -> None:
    rec = format_record(42, 12345)
    assert len(rec) == RECORD_SIZE and rec.endswith(b"\n")
    assert rec.startswith(b"wanmig 0000000042 000000012345 ")
    parsed = parse_record(rec[:-1])
    assert parsed is not None and parsed.seq == 42 and parsed.guest_ms == 12345 and parsed.crc_ok


def test_clean_log() -> None:
    r = check_log(log_of(list(range(100))))
    assert (r.records, r.gaps, r.bad_checksums, r.malformed, r.out_of_order) == (100, 0, 0, 0, 0)
    assert (r.first_seq, r.last_seq) == (0, 99)
    assert r.max_write_gap_ms == 10.0
    assert r.span_ms == 990.0
    assert r.ok


def test_empty_log() -> None:
    r = check_log(b"")
    assert r.records == 0 and r.first_seq is None and r.last_seq is None
    assert r.max_write_gap_ms == 0.0 and r.ok


def test_missing_records_count_as_gaps() -> None:
    r = check_log(log_of([0, 1, 2, 5, 6, 9]))
    assert r.gaps == 4  # 3, 4, 7, 8
    assert r.records == 6 and r.last_seq == 9
    assert not r.ok


def test_guest_clock_gap() -> None:
    data = format_record(0, 100) + format_record(1, 110) + format_record(2, 450) + format_record(3, 460)
    assert check_log(data).max_write_gap_ms == 340.0


def test_reboot_restarts_guest_clock() -> None:
    data = log_of([0, 1, 2], start_ms=5000) + log_of([3, 4], start_ms=800)
    r = check_log(data)
    assert r.ok and r.records == 5
    assert r.max_write_gap_ms == 10.0 and r.span_ms == 30.0


def test_bad_checksum() -> None:
    recs = bytearray(log_of(list(range(5))))
    # corrupt the guest-ms field of record 2: still well-formed, crc no longer matches
    pos = 2 * RECORD_SIZE + len("wanmig 0000000002 0000000")
    recs[pos:pos + 1] = b"9" if recs[pos:pos + 1] != b"9" else b"8"
    r = check_log(bytes(recs))
    assert r.bad_checksums == 1
    assert r.records == 4
    assert r.gaps == 1  # its seq cannot be trusted, so it is missing too
    assert not r.ok


def test_torn_tail_is_ignored() -> None:
    data = log_of(list(range(10)))
    torn = data + format_record(10, 2000)[:37]
    r = check_log(torn)
    assert (r.records, r.gaps, r.bad_checksums, r.malformed) == (10, 0, 0, 0)
    assert r.ok


def test_nul_tail_is_ignored() -> None:
    data = log_of(list(range(10)))
    assert check_log(data + b"\0" * RECORD_SIZE).ok
    assert check_log(data + b"\0" * (RECORD_SIZE - 1) + b"\n").ok
    assert check_log(data + b"\0" * 100).records == 10


def test_torn_record_in_the_middle_is_malformed() -> None:
    data = log_of([0, 1]) + format_record(2, 1020)[:30] + log_of([2, 3], start_ms=1030)
    r = check_log(data)
    # The torn piece runs into the retried record's line: both are lost as one
    # malformed line. (guestd drops a torn tail before appending, so this needs
    # a writer that does not.)
    assert r.malformed == 1
    assert r.records == 3 and r.gaps == 1
    assert not r.ok


def test_garbage_line_is_malformed() -> None:
    data = log_of([0, 1]) + b"hello\n" + log_of([2])
    r = check_log(data)
    assert r.malformed == 1 and r.records == 3 and r.gaps == 0


def test_rollback_counts_out_of_order() -> None:
    r = check_log(log_of([0, 1, 2, 3, 4, 2, 3, 4, 5]))
    assert r.out_of_order == 3
    assert r.gaps == 0 and r.last_seq == 5
    assert not r.ok


def test_to_dict() -> None:
    d = check_log(log_of([0, 2])).to_dict()
    assert d["records"] == 2 and d["gaps"] == 1 and d["bad_checksums"] == 0
    assert d["first_seq"] == 0 and d["last_seq"] == 2 and d["max_write_gap_ms"] == 10.0
    assert d["ok"] is False


# ----------------------------------------------------------------------------- real writer


@pytest.fixture(scope="module")
def guestd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("guestd") / "guestd"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(GUESTD_C)],
                   check=True, capture_output=True)
    return out


def run_writer(guestd: Path, log: Path, seconds: float) -> None:
    """Start the writer (it daemonizes and prints its PID), let it run, stop it by PID."""
    # Only stdout is read: the worker keeps stderr (its error channel) open.
    pid = int(subprocess.run([str(guestd), "writer", str(log), "10"], check=True,
                             stdout=subprocess.PIPE, text=True, timeout=10).stdout)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):  # not our child: wait until it is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def test_guestd_writer_matches_checker(guestd: Path, tmp_path: Path) -> None:
    log = tmp_path / "integrity.log"
    run_writer(guestd, log, 0.3)
    r = check_log(log.read_bytes())
    assert r.ok and r.first_seq == 0 and r.records >= 10
    assert log.stat().st_size % RECORD_SIZE == 0


def test_guestd_writer_continues_after_torn_tail(guestd: Path, tmp_path: Path) -> None:
    log = tmp_path / "integrity.log"
    run_writer(guestd, log, 0.2)
    first = check_log(log.read_bytes())
    assert first.last_seq is not None
    with log.open("ab") as f:  # a crash in the middle of a write
        f.write(format_record(first.last_seq + 1, 999999)[:20])
    run_writer(guestd, log, 0.2)
    r = check_log(log.read_bytes())
    assert r.ok, r
    assert r.first_seq == 0 and r.records > first.records


def test_guestd_rejects_a_bad_dirty_size(guestd: Path) -> None:
    proc = subprocess.run([str(guestd), "dirty", "0", "1"], capture_output=True, text=True,
                          timeout=10)
    assert proc.returncode == 2 and "bad size" in proc.stderr


# ----------------------------------------------------------------------------- guest memory

def sweep(n: int, errors: int = 0, pages: int = 2048) -> str:
    return f"wanmig-memcheck sweep={n} pages={pages} errors={errors}\r"


def bad(page: int, seq: int, expected: int, index: int | None = None,
        checksum: str = "ok") -> str:
    index = page if index is None else index
    return (f"wanmig-memcheck bad page={page} seq={seq} expected={expected} index={index} "
            f"checksum={checksum}\r")


def test_memcheck_counts_sweeps_that_started_in_the_log() -> None:
    # a destination's console: the first line ends a sweep that may have begun at A
    check = memcheck_from_console(["ep=4 pages=2048 errors=0\r",   # cut by the log's start
                                   sweep(5), "wanmig-guest: ready", sweep(6), sweep(7)])
    assert check == MemCheck(sweep_lines=3, errors=0, bad_pages=(), last_sweep=7)
    assert check.sweeps == 2 and check.done
    assert memcheck_fields(check) == {"guest_memory_sweeps": 2, "guest_memory_errors": 0}


def test_memcheck_with_one_sweep_line_is_not_done() -> None:
    for lines in ([], ["noise"], [sweep(9)]):
        check = memcheck_from_console(lines)
        assert check.sweeps == 0 and not check.done
        # not done is None, never 0: nothing says the memory is whole
        assert memcheck_fields(check) == {"guest_memory_sweeps": 0, "guest_memory_errors": None}


def test_memcheck_sums_errors_and_keeps_the_described_pages() -> None:
    lines = [sweep(3), bad(77, 3, 5), bad(12, 9, 9, index=4000, checksum="bad"),
             sweep(4, errors=2), sweep(5), sweep(6, errors=11)]
    check = memcheck_from_console(lines)
    assert check.errors == 13 and check.sweeps == 3
    stale, torn = check.bad_pages
    assert stale == BadPage(page=77, seq=3, expected=5, index=77, checksum_ok=True)
    assert stale.stale and not torn.stale and not torn.checksum_ok and torn.index == 4000
    assert memcheck_fields(check)["guest_memory_errors"] == 13


def test_memcheck_counts_bad_pages_whose_sweep_did_not_end() -> None:
    check = memcheck_from_console([sweep(1), bad(5, 1, 2)])
    assert check.errors == 1 and check.sweeps == 0
    assert check.done   # a bad page found is never "not done"
    assert memcheck_fields(check) == {"guest_memory_sweeps": 0, "guest_memory_errors": 1}


def test_memcheck_ignores_lines_that_are_not_whole() -> None:
    check = memcheck_from_console([
        "[   3.1] some kernel message wanmig-memcheck sweep=1 pages=2 errors=5",
        "wanmig-memcheck sweep=2 pages=2048",
        "wanmig-memcheck bad page=1 seq=2 expected=3 index=1 checksum=maybe",
    ])
    assert check == MemCheck(sweep_lines=0, errors=0)


def _result(**fields: object) -> IntegrityResult:
    return IntegrityResult(ok=True, destination_disk_writes=10, **fields)


def test_bad_guest_memory_is_a_problem_whatever_the_run_did() -> None:
    r = _result(guest_memory_sweeps=4, guest_memory_errors=2)
    for completed in (True, False):
        (problem,) = integrity_problems(r, completed=completed, memory_checked=True)
        assert "2 bad pages" in problem


def test_a_completed_dirty_run_needs_a_whole_sweep_at_b() -> None:
    for sweeps in (None, 0):
        r = _result(guest_memory_sweeps=sweeps, guest_memory_errors=None)
        (problem,) = integrity_problems(r, completed=True, memory_checked=True)
        assert "no whole sweep" in problem
        # a rollback, or a workload without the check, asks nothing of B's memory
        assert integrity_problems(r, completed=False, memory_checked=True) == []
        assert integrity_problems(r, completed=True) == []
    ok = _result(guest_memory_sweeps=1, guest_memory_errors=0)
    assert integrity_problems(ok, completed=True, memory_checked=True) == []


def test_page_checksum_sees_every_word_but_its_own() -> None:
    words = list(range(1000, 1000 + MEMCHECK_PAGE // 8))
    page = struct.pack("<512Q", *words)
    base = page_checksum(page)
    assert base == page_checksum(page[:16] + b"\xff" * 8 + page[24:])  # word 2 is the sum
    for i in (0, 1, 3, 4, 7, 200, 511):
        changed = words.copy()
        changed[i] ^= 1 << 63
        assert page_checksum(struct.pack("<512Q", *changed)) != base, i
    swapped = words.copy()
    swapped[10], swapped[14] = swapped[14], swapped[10]   # same lane, other order
    assert page_checksum(struct.pack("<512Q", *swapped)) != base


# -------------------------------------------------------------------- the real dirtier

class Dirtier:
    """``guestd dirty`` as a host process; its working set is reached through
    /proc/PID/mem (root), as a migration bug would reach the guest's."""

    def __init__(self, guestd: Path, err: Path, size_mib: int, rate: float) -> None:
        self.err = err
        with err.open("wb") as f:
            out = subprocess.run([str(guestd), "dirty", str(size_mib), str(rate)], check=True,
                                 stdout=subprocess.PIPE, stderr=f, text=True, timeout=20)
        self.pid = int(out.stdout)
        self.pages = (size_mib << 20) // MEMCHECK_PAGE
        try:
            self.mem = os.open(f"/proc/{self.pid}/mem", os.O_RDWR)
        except PermissionError:
            self.stop()
            pytest.skip("cannot open another process's memory (no CAP_SYS_PTRACE)")
        try:
            self.base = self._find_page_zero()
        except BaseException:
            self.stop()   # not our child: nothing else would end it
            raise

    def _find_page_zero(self) -> int:
        """The working set's address: its page 0 holds index 0 and a checksum that fits.
        (A page being rewritten as it is read fails; the next look finds it.)"""
        maps = Path(f"/proc/{self.pid}/maps").read_text().splitlines()
        for _ in range(20):
            for line in maps:
                m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) rw-p 0+ 00:00 0\s*$", line)
                if not m:
                    continue
                start, end = int(m.group(1), 16), int(m.group(2), 16)
                for at in range(start, end - self.pages * MEMCHECK_PAGE + 1, MEMCHECK_PAGE):
                    index, seq, csum = struct.unpack("<QQQ", os.pread(self.mem, 24, at))
                    if (index, min(seq, 1)) == (0, 1) and csum == page_checksum(
                            self.page(0, at)):
                        return at
            time.sleep(0.01)
        raise AssertionError("working set not found in the dirtier's memory")

    def page(self, index: int, base: int | None = None) -> bytes:
        return os.pread(self.mem, MEMCHECK_PAGE, (self.base if base is None else base)
                        + index * MEMCHECK_PAGE)

    def poke(self, index: int, offset: int, data: bytes) -> None:
        assert os.pwrite(self.mem, data, self.base + index * MEMCHECK_PAGE + offset) == len(data)

    def console(self) -> list[str]:
        return self.err.read_text().splitlines()

    def wait_sweeps(self, lines: int, timeout: float = 15.0) -> MemCheck:
        deadline = time.monotonic() + timeout
        while (check := memcheck_from_console(self.console())).sweep_lines < lines:
            assert time.monotonic() < deadline, f"sweep lines: {self.console()}"
            time.sleep(0.05)
        return check

    def stop(self) -> None:
        if hasattr(self, "mem"):
            os.close(self.mem)
        os.kill(self.pid, signal.SIGTERM)


StartDirtier = Callable[[int, float], Dirtier]


@pytest.fixture
def dirtier(guestd: Path, tmp_path: Path) -> Iterator[StartDirtier]:
    started: list[Dirtier] = []

    def start(size_mib: int, rate: float) -> Dirtier:
        d = Dirtier(guestd, tmp_path / f"dirty-{len(started)}.err", size_mib, rate)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def test_guestd_dirty_pages_carry_index_seq_and_checksum(dirtier: StartDirtier) -> None:
    d = dirtier(2, 0)
    for i in range(d.pages):
        page = d.page(i)
        index, seq, csum = struct.unpack("<QQQ", page[:24])
        assert (index, seq) == (i, 1) and csum == page_checksum(page), i
        assert len(set(page[24:])) > 200   # xorshift output, not a pattern
    check = d.wait_sweeps(3, timeout=10.0)   # 512 pages: about 1 s per sweep
    assert check.errors == 0 and check.last_sweep == 3
    assert all(f"pages={d.pages} " in line for line in d.console())


def test_guestd_dirty_finds_stale_torn_and_misplaced_pages(dirtier: StartDirtier) -> None:
    d = dirtier(2, 0)        # rate 0: only the sweep reads the set, nothing rewrites it
    d.wait_sweeps(1)
    d.poke(5, 1000, bytes(b ^ 0xFF for b in d.page(5)[1000:1004]))      # torn
    stale = bytearray(d.page(9))                                          # an older version
    stale[8:16] = struct.pack("<Q", 0)
    stale[16:24] = struct.pack("<Q", page_checksum(bytes(stale)))
    d.poke(9, 8, bytes(stale[8:24]))
    d.poke(13, 0, d.page(14))                                             # landed one off
    # each is found by the sweep under way or the next; the one after finds none
    check = d.wait_sweeps(d.wait_sweeps(1).sweep_lines + 3)
    assert check.errors == 3, d.console()
    pages = {b.page: b for b in check.bad_pages}
    assert pages[5] == BadPage(page=5, seq=1, expected=1, index=5, checksum_ok=False)
    assert pages[9] == BadPage(page=9, seq=0, expected=1, index=9, checksum_ok=True)
    assert pages[9].stale
    assert pages[13] == BadPage(page=13, seq=1, expected=1, index=14, checksum_ok=True)
    # found pages are rewritten (their next seq), so the next sweep counts them no more
    assert d.console()[-1].endswith("errors=0")
    assert struct.unpack("<Q", d.page(9)[8:16])[0] == 2


def test_guestd_dirty_checks_a_page_before_it_rewrites_it(dirtier: StartDirtier) -> None:
    # 256 pages rewritten at ~12000 pages/s: a page is rewritten long before the
    # sweep comes back to it, so the check before the rewrite is what finds it
    d = dirtier(1, 50)
    d.wait_sweeps(1)
    d.poke(100, 8, struct.pack("<Q", 0))   # seq 0: no version the dirtier wrote
    check = d.wait_sweeps(d.wait_sweeps(1).sweep_lines + 2)
    assert check.errors == 1, d.console()
    (found,) = check.bad_pages
    assert found.page == 100 and found.seq == 0 and found.expected > 1


def test_app_orders_on_the_disk_count_gaps_not_the_missing_tail() -> None:
    from wanmig.integrity import app_order_fields
    rec = "*3\r\n$3\r\nSET\r\n$7\r\norder:{n}\r\n$60\r\norder={n} at_ms=12 path=/app/order client=10.0.0.1\r\n"
    whole = "".join(rec.format(n=n) for n in range(1, 51))
    assert app_order_fields(whole) == {"app_orders": 50, "app_first_order": 1,
                                       "app_last_order": 50, "app_order_gaps": 0}
    holed = "".join(rec.format(n=n) for n in range(1, 51) if n not in (7, 8))
    assert app_order_fields(holed)["app_order_gaps"] == 2
    assert app_order_fields("")["app_orders"] == 0


def test_two_copies_running_at_once_is_a_problem() -> None:
    ok = IntegrityResult(ok=True, destination_disk_writes=3, both_running_ms=0.0)
    assert integrity_problems(ok, completed=True) == []
    bad = ok.model_copy(update={"both_running_ms": 12.5})
    assert integrity_problems(bad, completed=True) == ["two copies ran at once for 12.5 ms"]
