"""``WebLoadSpec``: what the web load asks of the guest's HTTP server, validated once.

The controller (web.py) builds one from its arguments and renders it into the
agent's command line (``to_args``); the agent (agent.py) parses that command
line back into the same value (``from_args``).  Both sides therefore validate
with the same code, and a bad option is a ``ConfigError`` before any process
is started.

Defaults: 20 requests/s, ``/`` three times for every ``/blob.bin`` (the guest
serves a small index page and a 256 KiB blob, see guest/init), a 2 s timeout
per request, at most 64 requests in flight (at 20 requests/s and 2 s each a
silent server holds 40: the cap only bites when something is badly wrong).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
from dataclasses import dataclass

from ..errors import ConfigError

DEFAULT_PATHS: tuple[str, ...] = ("/", "/", "/", "/blob.bin")
"""The request mix, cycled in order: three small responses for one large one."""

APP_PATHS: tuple[str, ...] = ("/app/order", "/app/order", "/app/order", "/")
"""The ``app`` workload's mix: three orders (nginx, the app tier, a Redis write each)
for one static page."""

MAX_RATE_PER_S = 1000.0
MAX_TIMEOUT_S = 60.0
MAX_IN_FLIGHT = 1024


@dataclass(frozen=True)
class WebLoadSpec:
    """Target and shape of the request load; ``ConfigError`` (naming the field) if invalid."""

    target: str
    port: int = 80
    rate_per_s: float = 20.0
    paths: tuple[str, ...] = DEFAULT_PATHS
    request_timeout_s: float = 2.0
    max_in_flight: int = 64

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.target)
        except ValueError as exc:
            raise ConfigError(f"{self.target!r} is not an IP address", field="target") from exc
        if isinstance(self.port, bool) or not isinstance(self.port, int) \
                or not 1 <= self.port <= 65535:
            raise ConfigError(f"{self.port!r} is not a TCP port", field="port")
        if not _number_within(self.rate_per_s, 0.0, MAX_RATE_PER_S) or self.rate_per_s == 0:
            raise ConfigError(f"{self.rate_per_s!r} must be above 0 and at most "
                              f"{MAX_RATE_PER_S:g} requests/s", field="rate_per_s")
        if not _number_within(self.request_timeout_s, 0.0, MAX_TIMEOUT_S) \
                or self.request_timeout_s == 0:
            raise ConfigError(f"{self.request_timeout_s!r} must be above 0 and at most "
                              f"{MAX_TIMEOUT_S:g} s", field="request_timeout_s")
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int) \
                or not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ConfigError(f"{self.max_in_flight!r} must be within 1..{MAX_IN_FLIGHT}",
                              field="max_in_flight")
        if isinstance(self.paths, str) or not self.paths:
            raise ConfigError("give at least one path, as a sequence", field="paths")
        object.__setattr__(self, "paths", tuple(self.paths))  # a list given is fine
        for path in self.paths:
            # it goes verbatim into the request line: no spaces, no line breaks
            if not isinstance(path, str) or not path.startswith("/") \
                    or any(c.isspace() or not c.isprintable() for c in path):
                raise ConfigError(f"{path!r} is not an absolute URL path", field="paths")

    def to_args(self) -> list[str]:
        """The agent options that describe this load (``from_args`` reads them back)."""
        args = ["--target", self.target, "--port", str(self.port),
                "--rate", repr(float(self.rate_per_s)),
                "--timeout", repr(float(self.request_timeout_s)),
                "--max-in-flight", str(self.max_in_flight)]
        for path in self.paths:
            args += ["--path", path]
        return args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare the options ``to_args`` writes."""
        parser.add_argument("--target", required=True, help="IP address of the HTTP server")
        parser.add_argument("--port", type=int, default=80)
        parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
        parser.add_argument("--timeout", type=float, default=2.0,
                            help="seconds per request (connect to last byte)")
        parser.add_argument("--max-in-flight", type=int, default=64)
        parser.add_argument("--path", action="append", default=None,
                            help="URL path, repeat for a mix (cycled in order); "
                                 f"default {' '.join(DEFAULT_PATHS)}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WebLoadSpec:
        """The spec named by parsed ``add_arguments`` options; ``ConfigError`` if invalid."""
        return cls(target=args.target, port=args.port, rate_per_s=args.rate,
                   paths=tuple(args.path) if args.path else DEFAULT_PATHS,
                   request_timeout_s=args.timeout, max_in_flight=args.max_in_flight)


def _number_within(value: object, low: float, high: float) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and low <= value <= high)

