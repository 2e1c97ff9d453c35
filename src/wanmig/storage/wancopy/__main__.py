"""``python -m wanmig.storage.wancopy send|receive ...``: one end of a wancopy."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ...children import emit
from ...errors import WanmigError
from . import receiver, sender


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wanmig.storage.wancopy",
                                description="wanmig's disk transport, one end.")
    p.add_argument("--owner", default=None,
                   help="ignored; names the owning run so `wanmig clean` can find us")
    sub = p.add_subparsers(dest="role", required=True)
    for role in ("send", "receive"):
        s = sub.add_parser(role)
        s.add_argument("--address", required=True, help="B's address")
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--session", required=True)
        s.add_argument("--streams", type=int, default=1)
        s.add_argument("--tls-dir", type=Path, default=None,
                       help="the endpoint's certificates (none: plain TCP)")
    send, receive = sub.choices["send"], sub.choices["receive"]
    send.add_argument("--source", type=Path, required=True)
    send.add_argument("--level", type=int, default=1, help="zstd level (0: none)")
    send.add_argument("--rate", type=int, default=0, help="bytes/s (0: no limit)")
    send.add_argument("--resume-s", type=float, default=300.0)
    send.add_argument("--wait-go", action="store_true",
                      help="connect, then read the source only after a `go` command")
    send.add_argument("--pace", type=int, default=0,
                      help="each stream's kernel pacing rate, bytes/s (0: none)")
    send.add_argument("--no-same-offset", dest="same_offset", action="store_false",
                      help="send blocks equal to B's base at the same offset too (the "
                           "target is not read through to that base)")
    receive.add_argument("--target", type=Path, required=True)
    receive.add_argument("--base", type=Path, required=True)
    receive.add_argument("--client-cert", default=None,
                         help="SHA-256 fingerprint of the only client certificate let in")
    args = p.parse_args(argv)
    if not 1 <= args.streams <= 16:
        p.error("--streams must be 1..16")
    return args


async def _main(args: argparse.Namespace) -> int:
    if args.role == "send":
        return await sender.run(args.source, args.address, args.port, args.tls_dir,
                                args.session, args.streams, args.level, args.rate,
                                args.resume_s, args.same_offset, args.pace,
                                args.wait_go)
    return await receiver.run(args.target, args.base, args.address, args.port, args.tls_dir,
                              args.session, args.client_cert, args.streams)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except (WanmigError, OSError) as exc:
        emit("error", message=f"wancopy {args.role}: {exc}", fatal=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
