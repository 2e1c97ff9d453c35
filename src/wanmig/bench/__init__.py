"""Benchmarks: ``wanmig bench KIND`` runs a whole matrix in one sitting and writes it as JSON.

``runner`` is the part every kind shares (repeats, median and range, the
document rewritten after each run, the checks); each kind is one module on
top of it::

    runner   BenchRun, summarise, spread: cases in, one JSON document out
    memory   every memory strategy x workload, each a full migration (the orchestrator)
    wan      every WAN profile, set against measured (the testbed's namespaces, a WanLink)

The kinds are imported by name (``wanmig.bench.memory``), not from here: the
memory bench pulls in the orchestrator, which the WAN bench does not need.
"""

from .runner import BenchRun, BenchState, check_repeat, medians, spread, summarise

__all__ = ["BenchRun", "BenchState", "check_repeat", "medians", "spread", "summarise"]
