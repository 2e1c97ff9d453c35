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
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass

from .record import IntegrityResult

__all__ = ["RECORD_SIZE", "IntegrityReport", "Record", "check_log", "format_record",
           "integrity_problems", "integrity_result", "parse_record"]

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


def integrity_problems(result: IntegrityResult, *, completed: bool) -> list[str]:
    """Why a run's integrity fails, one clause each; empty when it holds.

    The guest's log must show no lost, corrupted, malformed or reordered
    record (a stale copy resumed leaves records out of order), and a completed
    move must show the guest writing at B after the switchover.
    """
    problems = []
    if result.ok is False:
        problems.append(f"guest log: {result.guest_log_gaps} gaps, "
                        f"{result.guest_log_bad_checksums} bad, {result.guest_log_malformed} "
                        f"malformed, {result.guest_log_out_of_order} out of order")
    if completed and not result.destination_disk_writes:
        problems.append("the guest made no disk writes at B after the switchover")
    return problems
