"""The one exception tree of wanmig.

::

    WanmigError
     ├── ConfigError        bad scenario or option (exit code 2, nothing started)
     ├── ImageError         guest image could not be built or read
     ├── QemuError          a QEMU process failed to start, died, or QMP failed
     │    └── QmpTimeout    a QMP command or event did not arrive in time
     ├── NetworkError       namespaces, links or addresses could not be set up
     ├── MigrationError     the migration itself failed
     ├── StorageError       a disk could not be made, copied or checked
     ├── ProbeError         the client-side probes could not run
     └── MeasurementError   a WAN measurement endpoint failed or did not report

Every error carries a one-line message meant for the user; the low-level cause
is kept as ``__cause__`` (raise ... from exc) and in ``cause``.
"""

from __future__ import annotations


class WanmigError(Exception):
    """Root of all wanmig errors; ``str()`` is one line for the user."""

    exit_code = 1

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ConfigError(WanmigError):
    """A scenario or option is invalid; raised before anything is started."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class ImageError(WanmigError):
    """The guest image could not be built, or its disk could not be read."""


class QemuError(WanmigError):
    """A QEMU process failed to start, died, or a QMP command failed."""

    def __init__(self, message: str, *, vm: str | None = None,
                 cause: BaseException | None = None) -> None:
        super().__init__(f"[{vm}] {message}" if vm else message, cause=cause)
        self.vm = vm


class QmpTimeout(QemuError):
    """A QMP command or event did not arrive within its timeout."""


class NetworkError(WanmigError):
    """A namespace, link, address or route could not be set up or removed."""


class MigrationError(WanmigError):
    """The migration failed (QEMU reported failure, or it did not finish in time)."""


class StorageError(WanmigError):
    """The VM's disk could not be created, copied to the destination, or checked."""


class ProbeError(WanmigError):
    """The client-side probes could not be started or did not report."""


class MeasurementError(WanmigError):
    """A measurement endpoint failed to start, failed, or did not report in time."""
