"""Client-side probes: what a client of the migrating VM saw.

``ClientProbe`` (client.py) starts the agent process (agent.py: control
protocol over stdin/stdout) in the client's namespace and reads back a
``ProbeReport`` (report.py).  The UDP/TCP/HTTP probe threads live in
probes.py; the pure gap/percentile arithmetic in stats.py.
"""

from .client import ClientProbe, ProbeState, agent_argv
from .report import ProbeReport, ProbeWindow
from .stats import Gap, GapTracker, max_gap, percentile

__all__ = ["ClientProbe", "Gap", "GapTracker", "ProbeReport", "ProbeState", "ProbeWindow",
           "agent_argv", "max_gap", "percentile"]
