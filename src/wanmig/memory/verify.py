"""Verify mode (``[memory] verify``): both guests' RAM compared page by page.

A migration may be slow; it may never hand over a corrupted guest.  With
verify on, each QEMU keeps its guest RAM in a shared file under
``/dev/shm/wanmig/<run>/`` (``VmConfig.ram_file``) instead of anonymous
memory, so the host reads it without QEMU's help.  When the stream has ended
the source is stopped for good and the destination, started with ``-S``,
waits paused: neither copy can change, so the two files must be equal byte
for byte.  ``compare_ram`` checks that before the engine lets B run; a
difference fails the migration while B has never run, so the engine's rule
resumes the guest at A.

Postcopy is the exception: its destination runs before its memory is
complete, so there is no moment when both copies are whole and frozen.  A
postcopy run says so (``VerifyResult.note``) and relies on the guest's own
check (``guestd dirty``'s pattern, ``integrity.guest_memory_errors``).

The comparison reads both files in 1 MiB pieces into reused buffers (about
0.2-0.5 s for 512 MiB here); a piece that differs is compared page by page.
Only the guest's RAM is compared, not QEMU's small ROM blocks (BIOS,
option ROMs, ACPI tables), which the guest does not write.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path

from .survey import PAGE, ram_ranges

PIECE = 2**20
#: How many differing pages the record lists by address.
LISTED = 16


@dataclass(frozen=True)
class VerifyResult:
    """What the comparison found; ``match`` None when no comparison was possible."""

    match: bool | None
    pages: int = 0
    differing: int = 0
    first_addresses: tuple[int, ...] = ()   # guest-physical
    #: per listed page: how many bytes differ, and the first three 64-bit words of
    #: each copy (a ``guestd dirty`` page's index, seq and checksum: an older seq at
    #: B is a write the migration lost)
    details: tuple[dict[str, object], ...] = ()
    ms: float | None = None                 # how long B waited for the comparison
    note: str | None = None

    def integrity_fields(self) -> dict[str, object]:
        """The record's ``integrity.memory_*`` fields."""
        return {"memory_match": self.match,
                "memory_pages_compared": self.pages or None,
                "memory_pages_differing": self.differing if self.match is not None else None,
                "memory_first_differing": [hex(a) for a in self.first_addresses] or None,
                "memory_differing_detail": list(self.details) or None,
                "memory_verify_ms": self.ms, "memory_verify_note": self.note}

    def describe(self) -> str:
        where = ", ".join(hex(a) for a in self.first_addresses[:4])
        return (f"{self.differing} of {self.pages} guest RAM pages differ between A and B "
                f"(first at {where})")


def guest_address(offset: int, ram_bytes: int) -> int:
    """The guest-physical address of byte ``offset`` of the RAM file (``pc`` machine)."""
    for start, size in ram_ranges(ram_bytes):
        if offset < size:
            return start + offset
        offset -= size
    raise ValueError(f"offset beyond {ram_bytes} bytes of RAM")


def compare_ram(a: Path, b: Path, ram_bytes: int) -> VerifyResult:
    """Compare two RAM files of ``ram_bytes`` page by page (see the module docstring)."""
    t0 = time.monotonic()
    buf_a, buf_b = bytearray(PIECE), bytearray(PIECE)
    differing, first, details = 0, [], []
    with a.open("rb", buffering=0) as fa, b.open("rb", buffering=0) as fb:
        for off in range(0, ram_bytes, PIECE):
            n = min(PIECE, ram_bytes - off)
            if fa.readinto(buf_a) < n or fb.readinto(buf_b) < n:
                raise OSError(f"{a} or {b} is shorter than {ram_bytes} bytes")
            if buf_a == buf_b:
                continue
            va, vb = memoryview(buf_a), memoryview(buf_b)
            for p in range(0, n, PAGE):
                if va[p:p + PAGE] != vb[p:p + PAGE]:
                    differing += 1
                    if len(first) < LISTED:
                        first.append(guest_address(off + p, ram_bytes))
                        details.append(_detail(bytes(va[p:p + PAGE]), bytes(vb[p:p + PAGE])))
            va.release()
            vb.release()
    return VerifyResult(match=differing == 0, pages=ram_bytes // PAGE, differing=differing,
                        first_addresses=tuple(first), details=tuple(details),
                        ms=round((time.monotonic() - t0) * 1000, 1))


def _detail(a: bytes, b: bytes) -> dict[str, object]:
    words = "<3Q"
    at = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return {"bytes_differing": len(at),
            # the first differing 8-byte words: where in the page, and each copy's value
            "words_differing": [{"offset": w * 8, "a": a[w * 8:w * 8 + 8].hex(),
                                 "b": b[w * 8:w * 8 + 8].hex()}
                                for w in sorted({i // 8 for i in at})[:8]],
            "a_words": [hex(w) for w in struct.unpack_from(words, a)],
            "b_words": [hex(w) for w in struct.unpack_from(words, b)]}


def corrupt_page(path: Path, ram_bytes: int, *, after: int = 2**20) -> int:
    """Flip one byte of the first non-zero page at or after ``after`` in RAM file
    ``path`` (fault injection: a page that arrived wrong); its guest-physical address."""
    with path.open("r+b", buffering=0) as f:
        f.seek(after)
        for off in range(after, ram_bytes, PAGE):
            page = f.read(PAGE)
            if page.count(0) != PAGE:
                f.seek(off + PAGE // 2)
                f.write(bytes([page[PAGE // 2] ^ 0xFF]))
                return guest_address(off, ram_bytes)
    raise ValueError(f"{path}: no non-zero page to corrupt")
