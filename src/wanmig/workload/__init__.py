"""Workloads: what the VM is doing while it migrates (scenario ``vm.workload``).

``idle``   the guest's standing services only (echo servers, HTTP, the
           integrity writer; see guest/init).
``dirty``  inside the guest: ``guestd dirty SIZE_MIB RATE_MBPS`` rewrites
           pages of a resident working set at a fixed rate, the memory load of
           precopy experiments.  Nothing runs on the host; it is switched on
           with ``VmConfig.dirty = (size_mib, rate_mbps)`` (kernel command line
           ``wanmig.dirty=``, see ``wanmig.qemu.image.render_cmdline``).
``web``    outside the guest: a stream of HTTP clients from the client
           namespace, ``WebLoad`` (web.py), which starts the agent process
           (agent.py) and reads back a ``WebLoadReport`` (report.py).  The load
           is described by a ``WebLoadSpec`` (spec.py).
"""

from .report import RequestOutcome, WebLoadReport, WebTally
from .spec import DEFAULT_PATHS, WebLoadSpec
from .web import WebLoad, WebLoadState, web_agent_argv

__all__ = ["DEFAULT_PATHS", "RequestOutcome", "WebLoad", "WebLoadReport", "WebLoadSpec",
           "WebLoadState", "WebTally", "web_agent_argv"]
