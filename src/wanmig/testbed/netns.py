"""Network namespaces and the commands run inside them.

A ``Namespace`` is registered with the run's ``Registry`` before it is created
and unregistered after it is deleted.  Deleting a namespace deletes every
interface inside it (and the far end of its veth pairs), so teardown is
"stop the processes, delete the namespaces".
"""

from __future__ import annotations

import asyncio
import logging

from pyroute2 import netns as _netns

from ..errors import NetworkError
from ..registry import Registry, netns_exists, remove_netns

log = logging.getLogger("wanmig.testbed")


class Namespace:
    """One network namespace owned by a run."""

    def __init__(self, name: str, registry: Registry) -> None:
        if len(name) > 32:
            raise NetworkError(f"namespace name too long: {name!r}")
        self.name = name
        self.registry = registry
        self.created = False

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, created={self.created})"

    async def create(self) -> None:
        if netns_exists(self.name):
            raise NetworkError(f"namespace {self.name} already exists (run 'wanmig clean')")
        self.registry.add_netns(self.name)
        try:
            _netns.create(self.name)
        except OSError as exc:
            raise NetworkError(f"cannot create namespace {self.name}: {exc}", cause=exc) from exc
        self.created = True
        # IPv6 autoconfiguration only adds noise (DAD, solicitations) to the
        # measurements; nothing in the testbed uses IPv6.
        for key in ("all", "default"):
            await self.sysctl(f"net.ipv6.conf.{key}.disable_ipv6", "1")

    async def remove(self) -> None:
        remove_netns(self.name)
        if netns_exists(self.name):
            raise NetworkError(f"namespace {self.name} could not be removed")
        self.registry.drop_netns(self.name)
        self.created = False

    async def sysctl(self, key: str, value: str) -> None:
        await self.run("sysctl", "-qw", f"{key}={value}")

    async def run(self, *argv: str, timeout: float = 10.0) -> str:
        """Run a command inside the namespace; NetworkError if it fails."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.name, *argv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
        except asyncio.TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise NetworkError(f"{' '.join(argv)} in {self.name} timed out") from exc
        if proc.returncode != 0:
            raise NetworkError(f"{' '.join(argv)} in {self.name} failed: "
                               f"{err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")
