"""Predicting memory migrations, and choosing a strategy from the predictions.

Pure functions of measurements taken just before a migration: no I/O, no QEMU.
The "auto" memory part calls ``choose`` and applies the chosen
strategy's ``migration_settings``; the prediction goes into the result record,
and the benchmark compares it with what was measured.

Modules, in dependency order::

    inputs      Measurements, Targets, Calibration (documented constants)
    link        Pipe: guest-page bytes/s a strategy's channels move (TCP, zstd, caps)
    switchover  the fixed costs of a switchover: QEMU downtime and client outage
    settings    MigrationSettings: the QEMU values the model assumes
    rounds      precopy's passes, throttling and convergence, one pass at a time
    predict     Prediction, predict, predict_all
    choose      Decision, choose
"""

from .choose import Decision, choose
from .inputs import (POSTCOPY_FAMILY, STRATEGIES, Calibration, Measurements, Strategy,
                     Targets)
from .predict import Prediction, predict, predict_all
from .settings import MigrationSettings, downtime_limit_ms, migration_settings

__all__ = ["Calibration", "Decision", "Measurements", "MigrationSettings", "POSTCOPY_FAMILY",
           "Prediction", "STRATEGIES", "Strategy", "Targets", "choose", "downtime_limit_ms",
           "migration_settings", "predict", "predict_all"]
