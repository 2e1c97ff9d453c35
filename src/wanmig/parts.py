"""The tables of parts: every memory strategy, storage strategy and network mode, named once.

A migration is put together from three parts, one of each kind::

    kind      scenario key        package      first parts
    memory    [memory] strategy   memory/      precopy, precopy-tuned, postcopy, hybrid, auto
    storage   [storage] strategy  storage/     shared
    network   [network] mode      network/     l2-extend, dns-tunnel, mobile-ip, route

Each table lists, in the order users see them, the names wanmig knows, a
one-line summary, whether this build implements the part, the traits other
modules ask about (``modelled``: ``wanmig.model`` predicts it; ``surveyed``:
it measures the guest first; ``paced``: it needs the link's goodput measured
before it starts), and where its implementation lives (``module:Class``,
imported only when a run needs it, so this module imports nothing of
wanmig's and every other module may read it: the scenario validation, the
CLI's help, the model, the benches).

A name the project knows but has not implemented is refused with that
message when chosen, never replaced by another part.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class PartError(ValueError):
    """An unknown or unimplemented part name (the scenario validation words it)."""


@dataclass(frozen=True)
class PartInfo:
    """One entry of a table."""

    name: str
    summary: str
    impl: str | None = None        # "module:Class" below wanmig; None: not implemented yet
    traits: frozenset[str] = field(default_factory=frozenset)

    @property
    def implemented(self) -> bool:
        return self.impl is not None

    def load(self) -> type:
        """The class that implements this part."""
        if self.impl is None:
            raise PartError(f"{self.name!r} is not implemented yet in this version")
        module, _, cls = self.impl.partition(":")
        return getattr(importlib.import_module(f"wanmig.{module}"), cls)


class PartTable:
    """The parts of one kind, in the order users see them."""

    def __init__(self, kind: str, what: str, entries: list[PartInfo]) -> None:
        self.kind, self.what = kind, what
        self._entries = {e.name: e for e in entries}

    def __repr__(self) -> str:
        return f"PartTable({self.kind}, {list(self._entries)})"

    def __iter__(self) -> Iterator[PartInfo]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self, trait: str | None = None, *, implemented: bool | None = None) -> tuple[str, ...]:
        """Names in table order, optionally only those with ``trait`` / implemented."""
        return tuple(e.name for e in self
                     if (trait is None or trait in e.traits)
                     and (implemented is None or e.implemented == implemented))

    def has(self, name: str, trait: str) -> bool:
        return name in self._entries and trait in self._entries[name].traits

    def info(self, name: str) -> PartInfo:
        """The entry for ``name``; PartError (unknown, or not implemented) otherwise."""
        entry = self._entries.get(name)
        if entry is None:
            raise PartError(f"unknown {self.what} {name!r}; known: {', '.join(self._entries)}")
        if not entry.implemented:
            raise PartError(f"{self.what} {name!r} is not implemented yet in this version")
        return entry

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """An instance of the part named ``name``."""
        return self.info(name).load()(*args, **kwargs)

    def help(self) -> str:
        """One line for the CLI: every name with its summary, unimplemented ones marked."""
        return "; ".join(f"{e.name} ({e.summary}{'' if e.implemented else ', not yet'})"
                         for e in self)


def _t(*names: str) -> frozenset[str]:
    return frozenset(names)


MEMORY = PartTable("memory", "memory strategy", [
    PartInfo("precopy", "QEMU's defaults, the baseline", "memory.parts:Precopy", _t("modelled")),
    PartInfo("precopy-tuned", "multifd+zstd, auto-converge, downtime from the target",
             "memory.parts:PrecopyTuned", _t("modelled", "surveyed", "paced")),
    PartInfo("postcopy", "run at B at once, fault pages over the WAN", "memory.parts:Postcopy",
             _t("modelled", "postcopy")),
    PartInfo("hybrid", "precopy until it stalls, then postcopy", "memory.parts:Hybrid",
             _t("modelled", "paced", "postcopy")),
    PartInfo("auto", "measure, predict every strategy, run the best", "memory.parts:Auto",
             _t("surveyed", "paced")),
])

STORAGE = PartTable("storage", "storage strategy", [
    PartInfo("shared", "both sites open one disk image", "storage.shared:SharedStorage"),
    PartInfo("mirror", "libvirt's NBD + blockdev-mirror during memory", "storage.mirror:MirrorStorage"),
    PartInfo("precopy", "bulk copy with dirty tracking before memory",
             "storage.precopy:PrecopyStorage"),
    PartInfo("postcopy", "run at B at once, fetch blocks on demand",
             "storage.postcopy:PostcopyStorage"),
    PartInfo("hybrid", "bulk copy while A runs, the later writes on demand at B",
             "storage.hybrid:HybridStorage"),
    PartInfo("auto", "measure the disk's writes and the link, predict, run the best",
             "storage.auto:AutoStorage"),
])

NETWORK = PartTable("network", "network mode", [
    PartInfo("l2-extend", "the VM's subnet stretched over VXLAN", "network.l2extend:L2Extend"),
    PartInfo("dns-tunnel", "a new address and DNS record at B, a tunnel for old connections",
             "network.dnstunnel:DnsTunnel"),
    PartInfo("mobile-ip", "a home agent at A tunnels to the VM at B",
             "network.mobileip:MobileIp"),
    PartInfo("route", "the VM's /32 announced from its new site by BGP (BIRD)",
             "network.route:Route"),
])

TABLES = {t.kind: t for t in (MEMORY, STORAGE, NETWORK)}
