"""Scheduling for timing-critical threads: SCHED_FIFO and timer slack.

The probe agent, the WAN forwarder and the measurement endpoints time packets
to well under a millisecond on a machine whose cores QEMU keeps busy.  Both
calls act on the calling thread only (scheduling is per thread on Linux) and
are best effort: where they are not permitted the thread runs as before, and
``set_realtime`` says so, so that the caller can report it.
"""

from __future__ import annotations

import ctypes
import os


def set_timer_slack(ns: int = 1000) -> None:
    """Ask the kernel to wake this thread within ``ns`` of its deadline.

    The default slack (50 us) would be tolerable; 1 us costs nothing here.
    Best effort: ignored where prctl is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def set_realtime(priority: int) -> bool:
    """Give the calling thread SCHED_FIFO ``priority``; False if not allowed (or 0).

    On two busy cores (QEMU under TCG takes one whole) an ordinary thread is
    woken up to 20-35 ms late; a real-time one within ~1 ms.  The threads that
    get it sleep in select() most of the time, and the kernel's RT throttling
    bounds them anyway.
    """
    if priority <= 0:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0: this thread
    except (OSError, AttributeError):
        return False
    return True
