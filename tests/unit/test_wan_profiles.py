"""WAN profiles, their tc rendering, and the forwarder's pure parts (no root needed).

The forwarder's delay line is exercised on AF_UNIX datagram socket pairs
standing in for the two interfaces (no vnet header then), and its GSO
segmentation on hand-built frames checked with an independent checksum.
"""

from __future__ import annotations

import io
import json
import os
import socket
import statistics
import struct
import threading
import time

import pytest

from wanmig.children import Completed
from wanmig.errors import ConfigError
from wanmig.wan import link as link_module
from wanmig.wan.forwarder import VNET_HDR, Forwarder, is_tunnelled, parse_args, split_gso
from wanmig.wan.link import WanLink, WanLinkState, forwarder_argv
from wanmig.wan.profiles import (
    DEFAULT_QUEUE_MS,
    PROFILES,
    LinkProfile,
    netem_args,
    resolve_profile,
    tbf_args,
    tbf_params,
)

# ------------------------------------------------------------------ profiles


def test_named_profiles() -> None:
    assert set(PROFILES) == {"lan", "metro", "continental", "intercontinental", "lossy"}
    c = resolve_profile("continental")
    assert (c.rtt_ms, c.rate_mbit, c.loss_pct, c.queue_ms) == (50, 100, 0, DEFAULT_QUEUE_MS)
    lossy = resolve_profile("lossy")
    assert (lossy.rtt_ms, lossy.rate_mbit, lossy.loss_pct) == (80, 50, 0.5)
    assert resolve_profile("intercontinental").rate_mbit == 250
    assert resolve_profile(lossy) is lossy


def test_overrides_and_custom_values() -> None:
    p = resolve_profile({"profile": "continental", "rtt_ms": 10, "jitter_ms": 1})
    assert (p.name, p.rtt_ms, p.jitter_ms, p.rate_mbit) == ("continental", 10, 1, 100)
    # None means "not given" (as a scenario's unset optional fields arrive)
    assert resolve_profile({"profile": "lan", "rtt_ms": None}).rtt_ms == 0.2
    q = resolve_profile({"rtt_ms": 40, "rate_mbit": 50})
    assert (q.name, q.rtt_ms, q.rate_mbit, q.loss_pct) == ("custom", 40, 50, 0)
    assert resolve_profile({"rtt_ms": 0}).rate_mbit is None
    assert q.one_way_ms == 20


def test_profiles_are_frozen() -> None:
    with pytest.raises(ValueError):
        PROFILES["lan"].rtt_ms = 3  # type: ignore[misc]


@pytest.mark.parametrize(("spec", "field", "words"), [
    ("nowhere", "wan.profile", "unknown profile 'nowhere'"),
    ({"profile": "mars"}, "wan.profile", "known: lan, metro"),
    ({"rtt_ms": -5}, "wan.rtt_ms", "greater than or equal to 0"),
    ({"profile": "lan", "jitter_ms": -1}, "wan.jitter_ms", "greater than or equal to 0"),
    ({"rtt_ms": 10, "loss_pct": 101}, "wan.loss_pct", "less than or equal to 100"),
    ({"rtt_ms": 10, "rate_mbit": 0}, "wan.rate_mbit", "greater than 0"),
    ({"rtt_ms": 10, "queue_ms": 0}, "wan.queue_ms", "greater than 0"),
    ({"rtt_ms": 10, "latency": 3}, "wan.latency", "unknown setting"),
    ({"loss_pct": 1}, "wan.rtt_ms", "required"),
    ({"rtt_ms": "fast"}, "wan.rtt_ms", "valid number"),
])
def test_bad_profiles_are_refused_with_the_field_named(spec: object, field: str,
                                                       words: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_profile(spec)  # type: ignore[arg-type]
    assert info.value.field == field
    assert words in str(info.value)
    assert str(info.value).startswith(field + ": ")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ rendering


def test_tbf_params_follow_rate_and_queue() -> None:
    t = tbf_params(LinkProfile(rtt_ms=40, rate_mbit=50))
    # 50 Mbit/s = 6.25 MB/s; the bucket is 1 ms of it; the queue 20 ms of it
    assert t == {"rate": 6_250_000, "burst": 6250, "limit": 125_000}
    t = tbf_params(LinkProfile(rtt_ms=40, rate_mbit=1000, queue_ms=50))
    assert t == {"rate": 125_000_000, "burst": 125_000, "limit": 6_250_000}


def test_tbf_params_never_go_below_a_frame() -> None:
    t = tbf_params(LinkProfile(rtt_ms=1, rate_mbit=1, queue_ms=1), mtu=1614)
    assert t["burst"] == 1614                  # 1 ms at 1 Mbit/s is only 125 bytes
    assert t["limit"] == t["burst"] + 1614     # 1 ms of queue would hold no frame at all
    with pytest.raises(ValueError):
        tbf_params(LinkProfile(rtt_ms=1))


def test_tbf_args() -> None:
    assert tbf_args(LinkProfile(rtt_ms=40, rate_mbit=50), "left") == [
        "qdisc", "replace", "dev", "left", "root", "handle", "1:", "tbf",
        "rate", "6250000bps", "burst", "6250", "limit", "125000"]


def test_netem_args_delay_loss_and_rate() -> None:
    p = LinkProfile(rtt_ms=50, loss_pct=0.5, rate_mbit=100)
    netem, tbf = netem_args(p, "wa")
    assert netem[:10] == ["qdisc", "replace", "dev", "wa", "root", "handle", "1:", "netem",
                          "delay", "25ms"]
    assert netem[10:13] == ["loss", "random", "0.5%"]
    # the delay line holds 25 ms + the queue's 20 ms at 100 Mbit/s, counted in 84-byte frames
    assert netem[13:] == ["limit", str(-(-int(12_500_000 * 0.045) // 84))]
    assert tbf == ["qdisc", "replace", "dev", "wa", "parent", "1:1", "handle", "10:", "tbf",
                   "rate", "12500000bps", "burst", "12500", "limit", "250000"]


def test_netem_args_jitter_keeps_order_and_no_rate_means_no_tbf() -> None:
    (netem,) = netem_args(LinkProfile(rtt_ms=10, jitter_ms=2), "wb")
    assert netem[8:11] == ["delay", "5ms", "2ms"]
    assert netem[-2:] == ["rate", "10gbit"]   # netem's in-order scheduling
    assert "loss" not in netem
    (plain,) = netem_args(LinkProfile(rtt_ms=0.2), "wb")
    assert plain[8:10] == ["delay", "0.1ms"] and "rate" not in plain


def test_forwarder_argv_names_the_run() -> None:
    argv = forwarder_argv("wm1-w", "wa", "wb", LinkProfile(rtt_ms=5), python="/py",
                          owner="/run/wanmig/abc", rt_priority=7)
    assert argv[:9] == ["ip", "netns", "exec", "wm1-w", "/py", "-m", "wanmig.wan.forwarder",
                        "--owner", "/run/wanmig/abc"]
    assert argv[argv.index("--left") + 1] == "wa" and argv[argv.index("--right") + 1] == "wb"
    assert LinkProfile.model_validate_json(argv[argv.index("--profile") + 1]).rtt_ms == 5
    assert argv[argv.index("--rt-priority") + 1] == "7" and "--seed" not in argv
    assert parse_args(argv[7:]).owner == "/run/wanmig/abc"  # the forwarder takes it


# ------------------------------------------------- GSO segmentation (forwarder)


def _sum(b: bytes) -> int:
    """Plain ones'-complement sum, written independently of the forwarder's."""
    if len(b) % 2:
        b += b"\0"
    s = sum((b[i] << 8) | b[i + 1] for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _ipv4(payload_len: int, proto: int, ip_id: int) -> bytes:
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ip_id, 0x4000, 64,
                              proto, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
    struct.pack_into("!H", h, 10, ~_sum(bytes(h)) & 0xFFFF)
    return bytes(h)


def _ipv6(payload_len: int, proto: int) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, payload_len, proto, 64,
                       b"\xfd" + b"\0" * 14 + b"\1", b"\xfd" + b"\0" * 14 + b"\2")


ETH4 = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
ETH6 = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"


def _tcp(seq: int, flags: int) -> bytes:
    # 32-byte header (timestamps option), check field filled in by the caller
    return struct.pack("!HHIIBBHHH", 40000, 5001, seq, 77, 8 << 4, flags, 512, 0, 0) \
        + b"\x01\x01\x08\x0a" + b"\0" * 8


def _gso_frame(payload: bytes, mss: int, *, flags: int, tunnel: str | None) -> bytes:
    """A TCP GSO super-frame as AF_PACKET hands it over (vnet header first)."""
    tcp = bytearray(_tcp(1000, flags))
    inner_ip = _ipv4(len(tcp) + len(payload), 6, 0x100)
    pseudo = _sum(inner_ip[12:20] + struct.pack("!HH", 6, len(tcp) + len(payload)))
    struct.pack_into("!H", tcp, 16, pseudo)  # "checksum still to do": the pseudo-header sum
    inner = inner_ip + bytes(tcp) + payload
    if tunnel is None:
        frame = ETH4 + inner
    else:
        vx = struct.pack("!II", 0x08000000, 77 << 8) + ETH4 + inner
        udp = struct.pack("!HHHH", 50000, 4789, 8 + len(vx), 0xBEEF) + vx
        frame = (ETH4 + _ipv4(len(udp), 17, 0x200) if tunnel == "v4"
                 else ETH6 + _ipv6(len(udp), 17)) + udp
    csum_start = len(frame) - len(payload) - len(tcp)
    return VNET_HDR.pack(1, 1, csum_start + len(tcp), mss, csum_start, 16) + frame


def _check_tcp_piece(frame: bytes, ip_off: int, tcp_off: int, *, done: bool) -> None:
    ip = frame[ip_off:ip_off + 20]
    assert ip[9] == 6 and ip[8] == 64, "protocol and TTL survive"
    assert _sum(ip) == 0xFFFF, "IPv4 header checksum"
    assert int.from_bytes(ip[2:4], "big") == len(frame) - ip_off
    seg = frame[tcp_off:]
    pseudo = ip[12:20] + struct.pack("!HH", 6, len(seg))
    if not done:
        # "checksum still to do": the field holds the pseudo-header sum, and the
        # receiver's (or a NIC's) completion is the complement of the sum from there
        assert int.from_bytes(seg[16:18], "big") == _sum(pseudo)
        seg = seg[:16] + struct.pack("!H", ~_sum(seg) & 0xFFFF) + seg[18:]
    assert _sum(pseudo + seg) == 0xFFFF, "TCP checksum"


def test_split_plain_tcp_super_frame() -> None:
    payload = bytes(range(256)) * 12  # 3072 bytes -> 1400 + 1400 + 272
    data = _gso_frame(payload, 1400, flags=0x80 | 0x18 | 0x01, tunnel=None)  # CWR PSH ACK FIN
    assert not is_tunnelled(data)
    parts = split_gso(data)
    assert parts is not None and len(parts) == 3
    seqs, body = [], b""
    for i, part in enumerate(parts):
        flags, gso, _, _, csum_start, csum_off = VNET_HDR.unpack_from(part)
        assert (flags, gso, csum_start, csum_off) == (1, 0, 34, 16)
        frame = part[VNET_HDR.size:]
        _check_tcp_piece(frame, 14, 34, done=False)
        assert int.from_bytes(frame[18:20], "big") == 0x100 + i   # IPv4 id advances
        seqs.append(int.from_bytes(frame[38:42], "big"))
        tcp_flags = frame[34 + 13]
        assert bool(tcp_flags & 0x80) == (i == 0)                   # CWR first only
        assert bool(tcp_flags & 0x09) == (i == 2)                   # FIN, PSH last only
        body += frame[34 + 32:]
    assert seqs == [1000, 2400, 3800] and body == payload


def test_split_vxlan_over_ipv4() -> None:
    payload = b"x" * 2900
    data = _gso_frame(payload, 1398, flags=0x10, tunnel="v4")
    assert is_tunnelled(data)
    parts = split_gso(data)
    assert parts is not None and [len(p) for p in parts] == [10 + 116 + 1398] * 2 + [10 + 220]
    for part in parts:
        frame = part[VNET_HDR.size:]
        outer_ip, udp = frame[14:34], frame[34:42]
        assert outer_ip[9] == 17 and _sum(outer_ip) == 0xFFFF
        assert int.from_bytes(outer_ip[2:4], "big") == len(frame) - 14
        assert int.from_bytes(udp[4:6], "big") == len(frame) - 34
        assert udp[6:8] == b"\0\0"  # "no checksum", legal for UDP over IPv4
        _check_tcp_piece(frame, 64, 84, done=False)
        assert VNET_HDR.unpack_from(part)[4] == 84


def test_split_vxlan_over_ipv6_computes_both_checksums() -> None:
    data = _gso_frame(b"y" * 2000, 1398, flags=0x10, tunnel="v6")
    assert is_tunnelled(data)
    parts = split_gso(data)
    assert parts is not None and len(parts) == 2
    for part in parts:
        assert VNET_HDR.unpack_from(part)[:2] == (0, 0)  # nothing left to the kernel
        frame = part[VNET_HDR.size:]
        ip6, udp = frame[14:54], frame[54:]
        assert int.from_bytes(ip6[4:6], "big") == len(udp)
        pseudo = _sum(ip6[8:40] + struct.pack("!HH", 17, len(udp)))
        assert (_sum(udp) + pseudo) % 0xFFFF == 0 and udp[6:8] != b"\0\0"
        _check_tcp_piece(frame, 54 + 8 + 8 + 14, 54 + 8 + 8 + 14 + 20, done=True)


def test_split_refuses_what_it_does_not_know() -> None:
    data = bytearray(_gso_frame(b"z" * 3000, 1400, flags=0x10, tunnel=None))
    data[1] = 5  # UDP_L4: the kernel segments those itself
    assert split_gso(bytes(data)) is None


# ------------------------------------------------ the delay line, on socket pairs


class _Rig:
    """A Forwarder between two AF_UNIX datagram pairs, run in a thread, and a reader
    thread collecting what comes out (a datagram socket queues only ~10 frames)."""

    def __init__(self, profile: LinkProfile, seed: int = 1) -> None:
        self.send_end, left = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        right, self.recv_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (left, right):
            s.setblocking(False)
        self.recv_end.settimeout(0.05)
        self.ctl_r, self.ctl_w = os.pipe()
        self.out = io.StringIO()
        self.fwd = Forwarder(left, right, profile, vnet=False, seed=seed, ctl_fd=self.ctl_r,
                             out=self.out)
        self.socks = [self.send_end, left, right, self.recv_end]
        self.received: list[tuple[float, bytes]] = []
        self.reading = True
        self.threads = [threading.Thread(target=self.fwd.run, daemon=True),
                        threading.Thread(target=self._read, daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self) -> None:
        while self.reading:
            try:
                data = self.recv_end.recv(64)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data))

    def command(self, line: str) -> None:
        os.write(self.ctl_w, line.encode() + b"\n")

    def stop(self) -> dict:
        self.command("stop")
        self.reading = False
        for t in self.threads:
            t.join(5)
            assert not t.is_alive()
        stats = self.fwd.stats()
        for s in self.socks:
            s.close()
        os.close(self.ctl_r)
        os.close(self.ctl_w)
        return stats


def test_delay_line_delays_and_never_reorders_under_jitter() -> None:
    rig = _Rig(LinkProfile(rtt_ms=20, jitter_ms=5))
    sent = {}
    for i in range(100):
        sent[i] = time.monotonic()
        rig.send_end.send(struct.pack("!I", i))
        time.sleep(0.0005)
    time.sleep(0.1)
    stats = rig.stop()
    got = [struct.unpack("!I", data)[0] for _, data in rig.received]
    delays = [(t - sent[i]) * 1e3 for (t, _), i in zip(rig.received, got)]
    assert got == list(range(100)), "jitter must not reorder"
    # one way: 10 ms +- 5 ms, never earlier than a frame ahead; generous upper bounds
    assert min(delays) >= 4.9 and 8 <= statistics.median(delays) <= 25
    assert stats["left_to_right"]["frames"] == 100 and stats["right_to_left"]["frames"] == 0


def test_loss_down_up_and_live_set() -> None:
    rig = _Rig(LinkProfile(rtt_ms=0, loss_pct=30), seed=7)
    for i in range(2000):
        rig.send_end.send(b"%d" % i)
    time.sleep(0.2)
    rig.command("down")
    time.sleep(0.1)
    for i in range(50):
        rig.send_end.send(b"down")
    time.sleep(0.1)
    rig.command("up")
    rig.command('set {"loss_pct": 0}')
    time.sleep(0.1)
    for i in range(50):
        rig.send_end.send(b"after")
    time.sleep(0.2)
    stats = rig.stop()["left_to_right"]
    received = [data for _, data in rig.received]
    first = [r for r in received if r not in (b"down", b"after")]
    assert 0.25 < stats["loss_drops"] / 2000 < 0.35
    # a busy reader may let the (10-deep) socket fill: those count as queue drops
    assert len(first) + stats["queue_drops"] == 2000 - stats["loss_drops"]
    assert b"down" not in received and stats["down_drops"] == 50
    assert received.count(b"after") + stats["queue_drops"] >= 50
    events = [line.split('"')[3] for line in rig.out.getvalue().splitlines()]
    assert events == ["down", "up", "set"]


# -------------------------------------------- the netem back end, on a fake tc
# (this kernel has no sch_netem: the commands are checked, not run)


async def test_netem_backend_runs_its_rendered_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    qdisc_json = json.dumps([
        {"kind": "netem", "handle": "1:", "packets": 10, "bytes": 1000, "drops": 2, "qlen": 1},
        {"kind": "tbf", "handle": "10:", "parent": "1:1", "packets": 9, "bytes": 900,
         "drops": 3}])

    async def fake_run(argv: list[str], **kw: object) -> Completed:
        assert argv[:3] == ["tc", "-n", "wm1-w"]  # every command: tc in the link's namespace
        calls.append(argv[3:])
        return Completed(0, qdisc_json if "-j" in argv else "", "")

    async def has_netem(netns: str) -> bool:
        return True

    async def frame_size(self: WanLink) -> int:
        return 1614

    monkeypatch.setattr(link_module, "run_command", fake_run)
    monkeypatch.setattr(link_module, "netem_available", has_netem)
    monkeypatch.setattr(WanLink, "_check_interfaces", frame_size)

    p = LinkProfile(name="continental", rtt_ms=50, rate_mbit=100)
    link = WanLink("wm1-w", "wa", "wb", p, backend="netem")
    await link.start()
    assert link.backend == "netem" and link.pid is None and link.state is WanLinkState.UP
    assert calls == [*netem_args(p, "wa", mtu=1614), *netem_args(p, "wb", mtu=1614)]

    calls.clear()
    await link.down()
    assert link.state is WanLinkState.DOWN
    assert [c[c.index("loss"):c.index("loss") + 3] for c in calls if "netem" in c] == \
        [["loss", "random", "100%"]] * 2
    calls.clear()
    jittery = p.model_copy(update={"jitter_ms": 2.0})
    await link.set_profile(jittery)  # while down: stays down
    assert all("100%" in c for c in calls if "netem" in c)
    calls.clear()
    await link.up()
    assert calls == [*netem_args(jittery, "wa", mtu=1614), *netem_args(jittery, "wb", mtu=1614)]

    stats = await link.stats()
    assert stats["left_to_right"] == {"frames": 9, "bytes": 900, "loss_drops": 2,
                                      "queue_drops": 3, "in_flight": 1}
    assert stats["backend"] == "netem" and link.describe()["jitter_ms"] == 2.0

    calls.clear()
    await link.stop()
    assert calls == [["qdisc", "del", "dev", dev, "root"] for dev in ("wa", "wb")]
    assert link.state is WanLinkState.STOPPED
