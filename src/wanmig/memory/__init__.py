"""Memory migration: QEMU's migration stream, driven over QMP.

``parts`` are the strategies the engine runs (``wanmig.parts.MEMORY``);
``plan`` says what a strategy asks of QEMU (pure data), ``select`` turns the
link and the guest into the model's inputs and a plan, ``migration`` carries a
plan out, ``tls`` makes the certificates, ``survey`` measures a guest before
``precopy-tuned`` and ``auto`` plan.
"""

from .migration import POSTCOPY_LOSS, MigrationProgress, QemuMigration, capability_args
from .plan import MigrationPlan, TlsSettings, plan_from

__all__ = ["POSTCOPY_LOSS", "MigrationPlan", "MigrationProgress", "QemuMigration",
           "TlsSettings", "capability_args", "plan_from"]
