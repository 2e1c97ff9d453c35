"""The emulated WAN: a packet-level link between two interfaces of a middle namespace.

::

    site ns ── veth ── [left  ┐ middle ns ┌ right] ── veth ── site ns
                              └─ WanLink ─┘
                  delay + jitter + loss (netem, or the user-space forwarder)
                  rate + bounded queue  (TBF on each egress)

``profiles`` holds the pure part (profiles, validation, ``tc`` rendering),
``forwarder`` the user-space back end (its own process), ``link`` the
``WanLink`` object that runs either back end.
"""

from .link import WanLink, WanLinkState
from .profiles import PROFILES, LinkProfile, resolve_profile

__all__ = ["PROFILES", "LinkProfile", "WanLink", "WanLinkState", "resolve_profile"]
