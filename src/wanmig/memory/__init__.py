"""Memory migration: QEMU's migration stream, driven over QMP."""

from .precopy import MigrationProgress, PrecopyMigration, capability_args

__all__ = ["MigrationProgress", "PrecopyMigration", "capability_args"]
