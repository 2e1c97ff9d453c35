"""Memory migration: QEMU's migration stream, driven over QMP.

``plan`` says what each strategy asks of QEMU (pure data), ``migration`` carries
a plan out, ``tls`` makes the certificates, ``survey`` measures a guest before
the ``auto`` strategy chooses.
"""

from .migration import POSTCOPY_LOSS, MigrationProgress, QemuMigration, capability_args
from .plan import MigrationPlan, TlsSettings, plan_from

__all__ = ["POSTCOPY_LOSS", "MigrationPlan", "MigrationProgress", "QemuMigration",
           "TlsSettings", "capability_args", "plan_from"]
