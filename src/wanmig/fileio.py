"""Files wanmig keeps between runs: written whole, and built by one process at a time.

``atomic_write`` replaces a file by rename, so a reader (or a crash) never sees
half of it; ``locked`` makes processes that build the same thing (the guest
image, the deployment CA) take turns.  Both raise ``OSError``: the caller knows
which of wanmig's errors it means.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` by rename; the file has ``mode`` from its first byte.

    ``mkstemp`` creates the temporary file 0600 with a fresh name (O_EXCL: never
    through a planted symlink, never shared with a concurrent writer), so a key
    is never readable by others, not even for a moment.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (created with its directory if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
