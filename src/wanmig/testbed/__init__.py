"""The two-site testbed: network namespaces for site A, site B and the client."""

from .topology import Addressing, Testbed

__all__ = ["Addressing", "Testbed"]
