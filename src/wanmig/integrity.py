"""Check the guest's integrity log: were any durable writes lost across a migration?

Inside the guest, ``guestd writer`` appends one record every 10 ms to
``/data/integrity.log`` with ``O_APPEND|O_DSYNC``: a record is on the disk when
its ``write()`` returns. After a migration (or a crash) the host reads the log
back (``wanmig.qemu.image.read_integrity_log``) and checks it here. Pure: bytes
in, a report out.

Record format (64 bytes; the writer is ``guest/guestd.c``, keep the two in step)::

    wanmig 0000000042 000000012345 1a2b3c4d<24 spaces>\\n
    |      seq (10)   guest ms (12) crc32 of the 31 bytes before it (hex)

What counts:

- ``records``: records whose checksum verifies.
- ``gaps``: sequence numbers missing between the first and the last good record
  (a run of 3 missing numbers counts 3). A corrupted record also leaves a gap,
  since its number cannot be trusted.
- ``bad_checksums``: well-formed records whose crc does not match.
- ``malformed``: complete lines that are not records at all (wrong length,
  garbage, a torn record the writer appended after).
- ``out_of_order``: good records whose seq is not above every earlier one
  (a disk rolled back to older contents and written again shows up here).
- A torn final record (no newline yet, or a tail of NUL bytes where the file
  size reached the disk before the data) is ignored: the write never returned.
- ``max_write_gap_ms``: the largest guest-clock step between consecutive good
  records (a step back, after a reboot, counts as none); ``span_ms`` sums the steps,
  so ``records / span_ms`` is the write rate the guest achieved. The guest clock stands still while the VM is paused, so this shows
  stalls the guest itself saw (slow disk, starved vCPU), not migration downtime.

Guest memory (the ``dirty`` workload): ``guestd dirty`` writes every 4 KiB page
of its working set with its index, a per-page sequence number and a checksum,
keeps the seq it expects of each page in its own memory, verifies a page before
it rewrites it and sweeps the whole set about once a second, printing one line
per sweep (and one per bad page, the first few) on the serial console::

    wanmig-memcheck sweep=12 pages=16384 errors=0
    wanmig-memcheck bad page=77 seq=3 expected=5 index=77 checksum=ok

``memcheck_from_console`` reads those lines from one QEMU's console log. A
destination's log holds only what the guest printed at B, so its first sweep
line may end a sweep that began at A; a sweep that started at B is the second
line on. ``MemCheck.sweeps`` counts those, and the check is done only with at
least one of them (or an error found): ``memcheck_fields`` gives ``None``, not
0, for a check not done. A stale page (what a lost update leaves) shows as
``checksum=ok`` with ``seq`` below ``expected``.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .record import IntegrityResult

__all__ = ["APP_AOF_DIR", "app_order_fields", "MEMCHECK_SWEEP_PREFIX", "MEMCHECK_PAGE", "RECORD_SIZE", "BadPage", "IntegrityReport",
           "MemCheck", "Record", "check_log", "format_record", "integrity_problems",
           "integrity_result", "memcheck_fields", "memcheck_from_console", "page_checksum",
           "parse_record"]

RECORD_SIZE = 64
_CRC_OFFSET = 31  # len("wanmig ") + 10 + 1 + 12 + 1
_RECORD_RE = re.compile(rb"^wanmig (\d{10}) (\d{12}) ([0-9a-f]{8}) *$")


@dataclass(frozen=True)
class Record:
    seq: int
    guest_ms: int
    crc_ok: bool


def format_record(seq: int, guest_ms: int) -> bytes:
    """The 64-byte record the guest writes (used by tests and fakes)."""
    head = b"wanmig %010d %012d " % (seq, guest_ms)
    body = head + b"%08x" % zlib.crc32(head)
    return body.ljust(RECORD_SIZE - 1, b" ") + b"\n"


def parse_record(line: bytes) -> Record | None:
    """One record without its newline; ``None`` if it is not a record at all."""
    if len(line) != RECORD_SIZE - 1:
        return None
    m = _RECORD_RE.match(line)
    if m is None:
        return None
    crc_ok = int(m.group(3), 16) == zlib.crc32(line[:_CRC_OFFSET])
    return Record(seq=int(m.group(1)), guest_ms=int(m.group(2)), crc_ok=crc_ok)


@dataclass(frozen=True)
class IntegrityReport:
    records: int
    gaps: int
    bad_checksums: int
    first_seq: int | None
    last_seq: int | None
    max_write_gap_ms: float
    malformed: int = 0
    out_of_order: int = 0
    span_ms: float = 0.0  # guest-clock time covered by the good records (summed over reboots)

    @property
    def ok(self) -> bool:
        """No lost, corrupted or reordered record."""
        return not (self.gaps or self.bad_checksums or self.malformed or self.out_of_order)

    def to_dict(self) -> dict[str, int | float | None | bool]:
        return {**asdict(self), "ok": self.ok}


def check_log(data: bytes) -> IntegrityReport:
    """Check a whole integrity log (the bytes of the file)."""
    lines = data.split(b"\n")
    # The last piece has no newline: a record still being written, or b"" after
    # a complete log. Either way no write() of it returned.
    lines.pop()
    # Trailing NUL-filled lines: on a crash the file size can reach the disk
    # before the data does; no write() of those returned either.
    while lines and not lines[-1].strip(b"\0"):
        lines.pop()

    good: list[Record] = []
    bad = malformed = 0
    for line in lines:
        rec = parse_record(line)
        if rec is None:
            malformed += 1
        elif not rec.crc_ok:
            bad += 1
        else:
            good.append(rec)

    gaps = out_of_order = 0
    max_gap_ms = span_ms = 0.0
    highest: int | None = None
    for prev, cur in zip(good, good[1:]):
        # A step back is a reboot (the guest clock restarted): not a write gap.
        step = max(0.0, float(cur.guest_ms - prev.guest_ms))
        max_gap_ms = max(max_gap_ms, step)
        span_ms += step
    for rec in good:
        if highest is not None and rec.seq <= highest:
            out_of_order += 1
            continue
        if highest is not None:
            gaps += rec.seq - highest - 1
        highest = rec.seq

    return IntegrityReport(
        records=len(good),
        gaps=gaps,
        bad_checksums=bad,
        first_seq=good[0].seq if good else None,
        last_seq=highest,
        max_write_gap_ms=max_gap_ms,
        malformed=malformed,
        out_of_order=out_of_order,
        span_ms=span_ms,
    )


def integrity_result(report: IntegrityReport, **extra: object) -> IntegrityResult:
    """The record's ``integrity`` block for a checked log (``extra``: other fields)."""
    return IntegrityResult(ok=report.ok, guest_log_gaps=report.gaps,
                           guest_log_records=report.records,
                           guest_log_bad_checksums=report.bad_checksums,
                           guest_log_malformed=report.malformed,
                           guest_log_out_of_order=report.out_of_order,
                           guest_max_write_gap_ms=report.max_write_gap_ms, **extra)


# ------------------------------------------------------------------------ guest memory

MEMCHECK_SWEEP_PREFIX = "wanmig-memcheck sweep="
"""How every sweep line of ``guestd dirty`` starts (``QemuVm.wait_console_lines``)."""

_SWEEP_RE = re.compile(r"^wanmig-memcheck sweep=(\d+) pages=(\d+) errors=(\d+)$")
_BAD_RE = re.compile(r"^wanmig-memcheck bad page=(\d+) seq=(\d+) expected=(\d+) "
                     r"index=(\d+) checksum=(ok|bad)$")

MEMCHECK_PAGE = 4096
"""Bytes per working-set page; its words 0, 1, 2 are index, seq and checksum."""

_M64 = (1 << 64) - 1
_LANES = (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89)


def _mix64(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def page_checksum(page: bytes) -> int:
    """guestd's checksum of one working-set page (word 2, the checksum, counts as 0).

    The host-side twin of ``page_checksum`` in guestd.c, for tests that read
    or forge guest pages."""
    words = list(struct.unpack("<512Q", page))
    words[2] = 0
    h = list(_LANES)
    for i in range(0, len(words), 4):
        for k in range(4):
            h[k] = ((h[k] ^ words[i + k]) * 0x9E3779B97F4A7C15) & _M64
    return _mix64(h[0] ^ _mix64(h[1] ^ _mix64(h[2] ^ _mix64(h[3]))))


@dataclass(frozen=True)
class BadPage:
    """A page the guest found bad: ``seq`` and ``index`` as found in it, ``expected`` the
    seq it last wrote there."""

    page: int
    seq: int
    expected: int
    index: int
    checksum_ok: bool

    @property
    def stale(self) -> bool:
        """An older, self-consistent version of the page: an update was lost."""
        return self.checksum_ok and self.index == self.page and self.seq < self.expected


@dataclass(frozen=True)
class MemCheck:
    """What one console log says of the guest's memory check."""

    sweep_lines: int      # sweep lines in the log
    errors: int           # bad pages the guest reported in it
    bad_pages: tuple[BadPage, ...] = ()   # the first few, as described
    last_sweep: int | None = None         # the last sweep line's number

    @property
    def sweeps(self) -> int:
        """Whole sweeps that started within this log: the first line's sweep may have
        begun before the log did (at A, for a destination's log)."""
        return max(0, self.sweep_lines - 1)

    @property
    def done(self) -> bool:
        """At least one whole sweep verified every page, or a bad page was found."""
        return self.sweeps >= 1 or self.errors > 0


def memcheck_from_console(lines: Iterable[str]) -> MemCheck:
    """Read ``guestd dirty``'s memory check lines from one console log's lines.

    ``errors`` sums the sweep lines' counts, plus the bad pages described after
    the last sweep line (its sweep never ended in this log, but they were found).
    Other lines, and lines cut by the start of the log, are ignored.
    """
    sweep_lines = errors = pending = 0
    bad: list[BadPage] = []
    last: int | None = None
    for raw in lines:
        line = raw.strip()   # the serial console ends lines with \r\n
        if m := _SWEEP_RE.match(line):
            sweep_lines += 1
            last = int(m.group(1))
            errors += int(m.group(3))
            pending = 0
        elif m := _BAD_RE.match(line):
            page, seq, expected, index = (int(g) for g in m.group(1, 2, 3, 4))
            bad.append(BadPage(page=page, seq=seq, expected=expected, index=index,
                               checksum_ok=m.group(5) == "ok"))
            pending += 1
    return MemCheck(sweep_lines=sweep_lines, errors=errors + pending, bad_pages=tuple(bad),
                    last_sweep=last)


def memcheck_fields(check: MemCheck) -> dict[str, int | None]:
    """The record's ``integrity.guest_memory_*`` for a destination's console."""
    return {"guest_memory_sweeps": check.sweeps,
            "guest_memory_errors": check.errors if check.done else None}


#: What the ``app`` workload's tier stores per order (guestd.c ``app_order``).
_ORDER = re.compile(r"order=(\d+) at_ms=")
#: Where Redis keeps its append-only files on the Debian guest's disk.
APP_AOF_DIR = "/var/lib/redis/appendonlydir"


def app_order_fields(aof_text: str) -> dict[str, Any]:
    """The ``app`` workload's orders as Redis logged them on the disk: how many, the
    first and last, and the numbers missing between them.  Orders are numbered by
    Redis (``INCR``) from 1, so a missing one is one the disk lost; the last second's
    may be absent (``appendfsync everysec``), which is the tail, not a gap."""
    seen = sorted({int(n) for n in _ORDER.findall(aof_text)})
    if not seen:
        return {"app_orders": 0, "app_order_gaps": None}
    missing = seen[-1] - len(seen)      # of 1..last
    return {"app_orders": len(seen), "app_first_order": seen[0], "app_last_order": seen[-1],
            "app_order_gaps": missing}


def integrity_problems(result: IntegrityResult, *, completed: bool,
                       memory_checked: bool = False) -> list[str]:
    """Why a run's integrity fails, one clause each; empty when it holds.

    The guest's log must show no lost, corrupted, malformed or reordered
    record (a stale copy resumed leaves records out of order), and a completed
    move must show the guest writing at B after the switchover.  With
    ``memory_checked`` (the ``dirty`` workload ran) a completed move must also
    show a whole sweep of the guest's memory check at B; bad pages fail any run.
    """
    problems = []
    if result.ok is False:
        problems.append(f"guest log: {result.guest_log_gaps} gaps, "
                        f"{result.guest_log_bad_checksums} bad, {result.guest_log_malformed} "
                        f"malformed, {result.guest_log_out_of_order} out of order")
    if completed and not result.destination_disk_writes:
        problems.append("the guest made no disk writes at B after the switchover")
    if result.guest_memory_errors:
        n = result.guest_memory_errors
        problems.append(f"guest memory: {n} bad page{'s' if n != 1 else ''} found at B "
                        f"(lost or corrupted by the move; see B's console)")
    elif completed and memory_checked and not result.guest_memory_sweeps:
        problems.append("guest memory: no whole sweep of the memory check at B")
    if result.both_running_ms:
        problems.append(f"two copies ran at once for {result.both_running_ms:.1f} ms")
    if result.disk_match is False:
        problems.append(f"disk: A and B differ (first at byte {result.disk_first_difference})")
    if result.app_order_gaps:
        problems.append(f"application: {result.app_order_gaps} of the orders up to "
                        f"{result.app_last_order} are missing from Redis's file on the disk")
    if result.disk_fsck_clean is False:
        problems.append("disk: e2fsck found errors on B's disk: "
                        + "; ".join(result.disk_fsck_problems or []))
    return problems
