"""WAN link profiles: what a link should look like, and the ``tc`` arguments it renders to.

A ``LinkProfile`` is a frozen value: round-trip time, jitter, random loss, a
bottleneck rate and the depth of the bottleneck queue.  Both directions get
the same profile (half the RTT each way, jitter and loss drawn per direction).

Everything here is pure: ``resolve_profile`` turns a scenario's ``[wan]``
value into a profile (raising ``ConfigError`` with the field named), and
``tbf_params`` / ``tbf_args`` / ``netem_args`` render a profile into the
numbers and argument lists the back ends hand to ``tc``.  They are unit-tested
on their output; ``link.py`` only runs them.

Why the bottleneck queue is expressed in milliseconds (``queue_ms``): a byte
limit means nothing without the rate, while the time a full queue takes to
drain is what a flow feels (the extra RTT it adds under load).  The default,
20 ms, is a shallow router buffer: a saturated link adds at most 20 ms to the
RTT, so the RTT that was set stays the RTT a migration sees (deep buffers
would make a loaded "50 ms" link a 150 ms one).  Measured here with one CUBIC
stream: at 50 ms RTT it gets 91-92 % of 100 Mbit/s and 200 Mbit/s (TBF counts
Ethernet headers, so ~95 % is the most there is), whatever the queue (20, 50,
100 ms).  On a long fat pipe a buffer this small is below what CUBIC needs to
stay busy after a loss (~0.4 x BDP): 150 ms at 250 Mbit/s gives 63 % with
20 ms of queue, 75 % with 50 ms, 82 % with 100 ms -- that is TCP, not the link;
give such a profile a larger ``queue_ms`` when one stream should fill it.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from ..validation import config_error

#: Default bottleneck queue, as drain time at the link rate (see the module docstring).
DEFAULT_QUEUE_MS = 20.0

#: Bytes a full-size frame takes on the wire as TBF counts it (Ethernet header, no FCS).
ETH_HLEN = 14

#: TBF lets this much of the rate through in one go (its bucket).  One millisecond of
#: traffic: large enough that the token-bucket timer does not cap throughput at high
#: rates (1 Gbit/s: 125 kB, two GSO super-frames), small enough that bursts stay
#: negligible next to any RTT we emulate.  Never less than one frame (``tbf_params``).
BURST_MS = 1.0


class LinkProfile(BaseModel):
    """One direction's worth of WAN behaviour, applied to both directions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    rtt_ms: float = Field(ge=0, le=10_000)
    #: Per direction, uniform in [-jitter, +jitter] around rtt/2; never reorders.
    jitter_ms: float = Field(0.0, ge=0, le=10_000)
    #: Independent random loss per frame and direction.
    loss_pct: float = Field(0.0, ge=0, le=100)
    #: Bottleneck rate; None: no rate limit (the forwarder's own ceiling applies).
    rate_mbit: float | None = Field(None, gt=0, le=100_000)
    #: Bottleneck queue limit, as drain time at ``rate_mbit``.
    queue_ms: float = Field(DEFAULT_QUEUE_MS, gt=0, le=10_000)

    @property
    def one_way_ms(self) -> float:
        return self.rtt_ms / 2.0

    def summary(self) -> str:
        rate = f"{self.rate_mbit:g} Mbit/s" if self.rate_mbit else "unlimited"
        extra = f" ±{self.jitter_ms:g} ms" if self.jitter_ms else ""
        loss = f", {self.loss_pct:g}% loss" if self.loss_pct else ""
        return f"{self.name}: RTT {self.rtt_ms:g} ms{extra}, {rate}{loss}"


#: What a custom profile lacking a required value (``rtt_ms``) is told.
_MISSING_VALUE = "required for a custom profile (or name one with 'profile')"

PROFILES: dict[str, LinkProfile] = {
    p.name: p for p in (
        LinkProfile(name="lan", rtt_ms=0.2, rate_mbit=1000),
        LinkProfile(name="metro", rtt_ms=5, rate_mbit=1000),
        LinkProfile(name="continental", rtt_ms=50, rate_mbit=100),
        LinkProfile(name="intercontinental", rtt_ms=150, rate_mbit=250),
        LinkProfile(name="lossy", rtt_ms=80, rate_mbit=50, loss_pct=0.5),
    )
}


def resolve_profile(spec: str | dict[str, Any] | LinkProfile) -> LinkProfile:
    """A profile from a name, ``{"profile": name, **overrides}``, custom values, or itself.

    Raises ``ConfigError`` whose field is ``wan.<setting>`` and whose message is one line.
    """
    if isinstance(spec, LinkProfile):
        return spec
    if isinstance(spec, str):
        return _named(spec)
    if not isinstance(spec, dict):
        raise ConfigError(f"expected a profile name or a table, got {type(spec).__name__}",
                          field="wan")
    values = dict(spec)
    base: dict[str, Any] = {}
    if "profile" in values:
        name = values.pop("profile")
        if not isinstance(name, str):
            raise ConfigError(f"expected a profile name (got {name!r})", field="wan.profile")
        base = _named(name).model_dump()
    merged = {**base, **{k: v for k, v in values.items() if v is not None}}
    try:
        return LinkProfile.model_validate(merged)
    except ValidationError as exc:
        raise config_error(exc, "wan", missing=_MISSING_VALUE) from None


def _named(name: str) -> LinkProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}",
                          field="wan.profile") from None


# ------------------------------------------------------------------- rendering

def tbf_params(p: LinkProfile, mtu: int = 1500 + ETH_HLEN) -> dict[str, int]:
    """TBF's rate (bytes/s), burst and limit (bytes) for ``p``; ``mtu`` is the frame size.

    ``limit`` is ``queue_ms`` of traffic at the rate, but never below one burst
    plus one frame: TBF drops a packet bigger than its free queue outright, so
    a limit below a burst would cap the rate.  Raises ValueError when ``p``
    has no rate (then no TBF is installed at all).
    """
    if p.rate_mbit is None:
        raise ValueError(f"profile {p.name!r} has no rate: nothing for TBF to do")
    rate = round(p.rate_mbit * 1e6 / 8)
    burst = max(mtu, math.ceil(rate * BURST_MS / 1e3))
    limit = max(math.ceil(rate * p.queue_ms / 1e3), burst + mtu)
    return {"rate": rate, "burst": burst, "limit": limit}


def tbf_args(p: LinkProfile, dev: str, *, mtu: int = 1500 + ETH_HLEN,
             parent: str = "root", handle: str = "1:") -> list[str]:
    """``tc`` arguments installing (or replacing) ``p``'s TBF on ``dev``."""
    t = tbf_params(p, mtu)
    where = ["root"] if parent == "root" else ["parent", parent]
    # tc reads a bare number as bits/s in "rate", bytes in "burst" and "limit";
    # say "bps" (bytes/s in tc's language) so nothing is scaled behind our back
    return ["qdisc", "replace", "dev", dev, *where, "handle", handle, "tbf",
            "rate", f"{t['rate']}bps", "burst", str(t["burst"]), "limit", str(t["limit"])]


#: netem's packet limit covers every packet in its delay line; counted in the smallest
#: frames (64 bytes + 20 of preamble and gap) so that ACK floods do not hit it first.
_MIN_WIRE_FRAME = 84
#: Without a rate there is nothing to size the delay line by: a generous constant.
_NETEM_LIMIT_UNRATED = 100_000


def netem_args(p: LinkProfile, dev: str, *, mtu: int = 1500 + ETH_HLEN) -> list[list[str]]:
    """``tc`` argument lists (run in order) giving ``dev``'s egress ``p`` with sch_netem.

    netem (root, handle 1:) delays, jitters and drops; TBF grafted below it
    (1:1 -> 10:) takes the packets netem releases and applies the rate and
    the bounded bottleneck queue, exactly as TBF does for the forwarder.
    Jitter: netem's own time-sorted queue would reorder packets whose
    jittered delays cross; given a ``rate`` it schedules each packet after the
    previous one instead (release = max(previous, arrival + delay + jitter)),
    which is the profile's no-reordering rule.  That rate is set far above
    any link rate (10 Gbit/s: 1.2 µs per full frame) so it only orders.
    """
    one_way = p.one_way_ms
    netem = ["qdisc", "replace", "dev", dev, "root", "handle", "1:", "netem",
             "delay", f"{one_way:g}ms"]
    if p.jitter_ms:
        netem += [f"{p.jitter_ms:g}ms"]
    if p.loss_pct:
        netem += ["loss", "random", f"{p.loss_pct:g}%"]
    if p.rate_mbit is not None:
        in_flight = p.rate_mbit * 1e6 / 8 * (one_way + p.jitter_ms + p.queue_ms) / 1e3
        limit = max(1000, math.ceil(in_flight / _MIN_WIRE_FRAME))
    else:
        limit = _NETEM_LIMIT_UNRATED
    netem += ["limit", str(limit)]
    if p.jitter_ms:
        netem += ["rate", "10gbit"]
    commands = [netem]
    if p.rate_mbit is not None:
        commands.append(tbf_args(p, dev, mtu=mtu, parent="1:1", handle="10:"))
    return commands
