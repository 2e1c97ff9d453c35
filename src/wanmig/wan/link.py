"""``WanLink``: one emulated WAN link between two interfaces of a middle namespace.

Two back ends behind one interface::

    netem       where the kernel has sch_netem: on each egress, netem (delay,
                jitter, loss) with TBF grafted below it (rate, bounded queue).
    forwarder   everywhere else (this machine): TBF on each egress, and the
                user-space forwarder process (``forwarder.py``) holding frames
                for the delay between the two interfaces.

``backend="auto"`` takes netem when a probe qdisc can be added in the
namespace (checked once per process), else the forwarder.  Asking for netem
where the kernel lacks it is an error: a run never silently measures
something other than what it asked for.  Either way both directions get the
profile, and ``describe()`` says which back end ran.

Life, explicit and shown by ``__repr__``::

    CREATED ──start()──> UP <──down()/up()──> DOWN
       │                  │                     │
       └──── failure ─────┴──────stop()─────────┴──> STOPPED

``stop()`` always reaps the forwarder (SIGKILL after a grace period) and
removes the qdiscs it installed; it is idempotent.  The forwarder is
registered with the run's ``Registry`` (its command line names the run
directory), so ``wanmig clean`` finds it after a crash; it also stops by
itself when its stdin closes, so a crashed controller does not leave it running.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import secrets
import sys
from types import TracebackType
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..children import JsonLinesChild, module_argv, owner_of, run_command, strip_event
from ..errors import ConfigError, NetworkError
from ..registry import Registry
from .profiles import ETH_HLEN, LinkProfile, netem_args, resolve_profile, tbf_args

BACKENDS = ("auto", "netem", "forwarder")


def check_backend(name: str) -> str:
    """``name`` if it is a back end (the scenario's ``[wan] backend`` and ``WanLink`` both ask)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    return name

#: netem availability by kernel: probed once per process (the kernel does not change).
_netem_verdict: bool | None = None


class WanLinkState(enum.Enum):
    CREATED = "created"
    UP = "up"
    DOWN = "down"
    STOPPED = "stopped"


def forwarder_argv(netns: str, left: str, right: str, profile: LinkProfile, *,
                   python: str = sys.executable, rt_priority: int = 20,
                   seed: int | None = None, owner: str | None = None) -> list[str]:
    """The forwarder's command line (its options, in ``module_argv``); pure."""
    args = ["--left", left, "--right", right, "--profile", profile.model_dump_json(),
            "--rt-priority", str(rt_priority)]
    if seed is not None:
        args += ["--seed", str(seed)]
    return module_argv("wanmig.wan.forwarder", args, python=python, netns=netns, owner=owner)


async def _tc(netns: str, args: list[str], timeout: float = 10.0) -> str:
    """Run ``tc`` in ``netns``; NetworkError with tc's own message if it fails."""
    done = await run_command(["tc", "-n", netns, *args], timeout=timeout, error=NetworkError,
                             what=f"tc {' '.join(args)} in {netns}")
    return done.out


async def netem_available(netns: str) -> bool:
    """Whether this kernel has sch_netem: add one on a throw-away veth in ``netns``."""
    global _netem_verdict
    if _netem_verdict is not None:
        return _netem_verdict
    probe = f"wmnp{secrets.token_hex(3)}"
    await run_command(["ip", "-n", netns, "link", "add", probe, "type", "veth", "peer", "name",
                       probe + "p"], timeout=10.0, error=NetworkError,
                      what=f"netem probe in {netns}: ip link add")
    try:
        tried = await run_command(["tc", "-n", netns, "qdisc", "add", "dev", probe, "root",
                                   "netem", "delay", "1ms"], timeout=10.0, error=NetworkError,
                                  check=False)
    finally:
        await run_command(["ip", "-n", netns, "link", "del", probe], timeout=10.0,
                          error=NetworkError, check=False)
    missing = "unknown" in tried.err.lower() or "no such file" in tried.err.lower()
    if tried.code != 0 and not missing:
        raise NetworkError(f"cannot probe for netem in {netns}: {tried.err}")
    _netem_verdict = tried.code == 0
    return _netem_verdict


class WanLink:
    """Delay, jitter, loss and rate between ``left`` and ``right`` in ``netns``."""

    def __init__(self, netns: str, left: str, right: str, profile: LinkProfile, *,
                 registry: Registry | None = None, backend: str = "auto",
                 rt_priority: int = 20, python: str = sys.executable,
                 seed: int | None = None) -> None:
        try:
            check_backend(backend)
        except ValueError as exc:
            raise ConfigError(str(exc), field="wan.backend") from None
        self.netns, self.left, self.right = netns, left, right
        self.profile = resolve_profile(profile)
        self.registry = registry
        self.requested_backend = backend
        self.backend = backend  # the one that runs, once start() has chosen
        self.rt_priority, self.python, self.seed = rt_priority, python, seed
        self.state = WanLinkState.CREATED
        self.ready_info: dict[str, Any] = {}
        self.final_stats: dict[str, Any] | None = None
        self.log = logging.getLogger(f"wanmig.wan.{netns}.{left}-{right}")
        self._mtu = 1500
        self._qdiscs_on = False  # a root qdisc of ours is on both interfaces
        self._forwarder: JsonLinesChild | None = None

    def __repr__(self) -> str:
        pid = f", pid={self.pid}" if self.pid is not None else ""
        return (f"WanLink({self.netns}:{self.left}<->{self.right}, {self.profile.name}, "
                f"backend={self.backend}, state={self.state.value}{pid})")

    @property
    def pid(self) -> int | None:
        return self._forwarder.pid if self._forwarder else None

    def describe(self) -> dict[str, Any]:
        """The link as set, for the result record."""
        p = self.profile
        return {"profile": p.name, "backend": self.backend, "rtt_ms": p.rtt_ms,
                "jitter_ms": p.jitter_ms, "loss_pct": p.loss_pct, "rate_mbit": p.rate_mbit,
                "queue_ms": p.queue_ms}

    # -- lifetime -------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        """Install the qdiscs and (forwarder) start the process; UP when it is ready."""
        if self.state is not WanLinkState.CREATED:
            raise NetworkError(f"cannot start {self!r}")
        try:
            async with asyncio.timeout(timeout):
                self._mtu = await self._check_interfaces()
                has_netem = await netem_available(self.netns)
                if self.requested_backend == "netem" and not has_netem:
                    raise NetworkError(
                        "backend 'netem' requested but this kernel has no sch_netem "
                        "(use backend 'forwarder' or 'auto')")
                self.backend = "netem" if has_netem and self.requested_backend != "forwarder" \
                    else "forwarder"
                if self.backend == "netem":
                    await self._netem_apply(self.profile)
                else:
                    await self._tbf_apply(self.profile)
                    await self._spawn(timeout)
        except BaseException as exc:
            try:
                await self._teardown()
            except NetworkError as cleanup:  # the first failure is the one to report
                self.log.warning("cleanup after a failed start: %s", cleanup)
            if isinstance(exc, TimeoutError):
                raise NetworkError(f"WAN link in {self.netns} not up within {timeout:g} s "
                                   f"({self._forwarder_tail()})", cause=exc) from exc
            raise
        self.state = WanLinkState.UP
        self.log.info("up: %s (%s)", self.profile.summary(), self.backend)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the forwarder (final stats kept in ``final_stats``), remove the qdiscs."""
        if self.state is WanLinkState.STOPPED:
            return
        if self._forwarder is not None and self.state in (WanLinkState.UP, WanLinkState.DOWN):
            try:
                event = await self._forwarder.finish("stopped", min(timeout, 5.0))
                self.final_stats = strip_event(event)
            except NetworkError as exc:
                self.log.warning("forwarder did not stop cleanly: %s", exc)
        await self._teardown(timeout)

    async def __aenter__(self) -> WanLink:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # -- control --------------------------------------------------------------

    async def down(self) -> None:
        """Drop everything, both ways (also what is in flight), until ``up()``."""
        self._require(WanLinkState.UP, WanLinkState.DOWN)
        if self.backend == "netem":
            await self._netem_apply(self.profile.model_copy(update={"loss_pct": 100.0}))
        else:
            await self._command("down", "down")
        self.state = WanLinkState.DOWN
        self.log.info("down")

    async def up(self) -> None:
        self._require(WanLinkState.UP, WanLinkState.DOWN)
        if self.backend == "netem":
            await self._netem_apply(self.profile)
        else:
            await self._command("up", "up")
        self.state = WanLinkState.UP
        self.log.info("up")

    async def set_profile(self, profile: LinkProfile) -> None:
        """Change the link live: delay, jitter, loss, rate and queue."""
        self._require(WanLinkState.UP, WanLinkState.DOWN)
        profile = resolve_profile(profile)
        if self.backend == "netem":
            down = self.state is WanLinkState.DOWN
            await self._netem_apply(
                profile.model_copy(update={"loss_pct": 100.0}) if down else profile)
        else:
            if (profile.rate_mbit, profile.queue_ms) != (self.profile.rate_mbit,
                                                         self.profile.queue_ms):
                await self._tbf_apply(profile)
            await self._command(f"set {profile.model_dump_json()}", "set")
        self.profile = profile
        self.log.info("set: %s", profile.summary())

    async def stats(self) -> dict[str, Any]:
        """Counters per direction (``left_to_right``, ``right_to_left``) and per qdisc."""
        self._require(WanLinkState.UP, WanLinkState.DOWN)
        qdiscs = {side: await self._qdisc_stats(ifname)
                  for side, ifname in (("left", self.left), ("right", self.right))}
        if self.backend == "forwarder":
            result = strip_event(await self._command("stats", "stats"))
        else:
            result = {"state": self.state.value, "cpu_s": None,
                      "left_to_right": _netem_direction(qdiscs["right"]),
                      "right_to_left": _netem_direction(qdiscs["left"])}
        result["qdisc"] = qdiscs
        result["backend"] = self.backend
        return result

    def _require(self, *states: WanLinkState) -> None:
        if self.state not in states:
            raise NetworkError(f"{self!r}: not running")

    # -- qdiscs ---------------------------------------------------------------

    async def _check_interfaces(self) -> int:
        """Both interfaces exist in the namespace; returns their frame size (MTU + 14)."""
        mtus = []
        try:
            async with AsyncIPRoute(netns=self.netns) as ipr:
                for ifname in (self.left, self.right):
                    found = await ipr.link_lookup(ifname=ifname)
                    if not found:
                        raise NetworkError(f"interface {ifname} not found in {self.netns}")
                    msg = (await ipr.link("get", index=found[0]))[0]
                    mtus.append(int(msg.get("IFLA_MTU") or 1500))
        except (NetlinkError, OSError) as exc:
            raise NetworkError(f"cannot look at namespace {self.netns}: {exc}",
                               cause=exc) from exc
        return max(mtus) + ETH_HLEN

    async def _tbf_apply(self, profile: LinkProfile) -> None:
        for ifname in (self.left, self.right):
            if profile.rate_mbit is not None:
                await _tc(self.netns, tbf_args(profile, ifname, mtu=self._mtu))
            elif self._qdiscs_on:
                await self._del_root(ifname)
        self._qdiscs_on = profile.rate_mbit is not None

    async def _netem_apply(self, profile: LinkProfile) -> None:
        for ifname in (self.left, self.right):
            if profile.rate_mbit is None and self._qdiscs_on:
                await self._del_root(ifname)  # netem alone: drop the old TBF child with it
            for args in netem_args(profile, ifname, mtu=self._mtu):
                await _tc(self.netns, args)
        self._qdiscs_on = True  # a root qdisc of ours is installed either way

    async def _del_root(self, ifname: str) -> None:
        """Remove ``ifname``'s root qdisc; already gone (or the interface) is fine."""
        done = await run_command(["tc", "-n", self.netns, "qdisc", "del", "dev", ifname, "root"],
                                 timeout=10.0, error=NetworkError, check=False)
        gone = ("cannot find", "no such", "invalid handle", "handle of zero")
        if done.code != 0 and not any(words in done.err.lower() for words in gone):
            raise NetworkError(f"cannot remove the qdisc of {ifname} in {self.netns}: "
                               f"{done.err}")

    async def _qdisc_stats(self, ifname: str) -> list[dict[str, Any]]:
        out = await _tc(self.netns, ["-s", "-j", "qdisc", "show", "dev", ifname])
        keep = ("kind", "handle", "parent", "bytes", "packets", "drops", "overlimits",
                "backlog", "qlen")
        try:
            return [{k: q[k] for k in keep if k in q} for q in json.loads(out or "[]")]
        except ValueError:
            return []

    # -- the forwarder process ------------------------------------------------

    async def _spawn(self, timeout: float) -> None:
        argv = forwarder_argv(self.netns, self.left, self.right, self.profile,
                              python=self.python, rt_priority=self.rt_priority,
                              seed=self.seed, owner=owner_of(self.registry))
        self._forwarder = JsonLinesChild(argv, name="WAN forwarder", error=NetworkError,
                                         registry=self.registry, log=self.log)
        self.ready_info = await self._forwarder.start(timeout)
        if not self.ready_info.get("realtime") and self.rt_priority > 0:
            self.log.warning("forwarder runs without real-time priority: "
                             "delays may stretch under load")

    async def _teardown(self, timeout: float = 10.0) -> None:
        """Reap the forwarder and remove the qdiscs; safe to call in any state."""
        errors = []
        if self._forwarder is not None:  # EOF: the forwarder stops by itself
            await self._forwarder.close(max(1.0, timeout / 2))
        if self._qdiscs_on:
            for ifname in (self.left, self.right):
                try:
                    await self._del_root(ifname)
                except NetworkError as exc:
                    errors.append(str(exc))
            self._qdiscs_on = False
        self.state = WanLinkState.STOPPED
        if errors:
            raise NetworkError("; ".join(errors))

    async def _command(self, line: str, expected: str, timeout: float = 5.0) -> dict[str, Any]:
        """Send one command to the forwarder and await its answer; one at a time."""
        if self._forwarder is None:
            raise NetworkError(f"{self!r}: no forwarder")
        return await self._forwarder.command(line, expected, timeout)

    def _forwarder_tail(self) -> str:
        return self._forwarder.stderr_tail() if self._forwarder else "no stderr"


def _netem_direction(qdiscs: list[dict[str, Any]]) -> dict[str, Any]:
    """One direction's counters from the egress qdiscs' (netem root, TBF child) stats."""
    root = next((q for q in qdiscs if q.get("kind") == "netem"), {})
    tbf = next((q for q in qdiscs if q.get("kind") == "tbf"), {})
    return {"frames": tbf.get("packets", root.get("packets")),
            "bytes": tbf.get("bytes", root.get("bytes")),
            "loss_drops": root.get("drops"), "queue_drops": tbf.get("drops", 0),
            "in_flight": root.get("qlen")}
