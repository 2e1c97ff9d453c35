"""wancopy on its own, over loopback: real qemu-nbd at both ends, real TLS.

A base with known blocks, an overlay on it holding each kind of block wancopy
sorts (explicit zeros, a block of zeros, a block equal to the base at the same
offset, one equal to a base block elsewhere, repeats, random data, text), and
a fresh overlay at "B" that must end up reading the same.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from wanmig.children import JsonLinesChild, module_argv
from wanmig.errors import StorageError
from wanmig.memory.tls import DeploymentCa, MigrationTls
from wanmig.storage.wancopy import protocol as p
from wanmig.storage.wancopy.endpoint import cert_fingerprint

pytestmark = [pytest.mark.root, pytest.mark.qemu]

PORT = 17710
BLOCK = p.BLOCK
MODULE = "wanmig.storage.wancopy"


def _qemu_io(image: Path, *commands: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for c in commands:
        argv += ["-c", c]
    subprocess.run([*argv, str(image)], check=True, capture_output=True)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    base = tmp_path / "base.raw"
    with base.open("wb") as f:
        f.truncate(64 * 2**20)
        for i in range(100):                     # random blocks at every third block
            f.seek(3 * i * BLOCK)
            f.write(os.urandom(BLOCK))
    src, dst = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    for img in (src, dst):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                        str(img)], check=True)
    (tmp_path / "base3").write_bytes(base.read_bytes()[3 * BLOCK:4 * BLOCK])
    (tmp_path / "rnd").write_bytes(os.urandom(3 * 2**20))
    (tmp_path / "txt").write_bytes("".join(f"order {i} paid\n" for i in range(200_000))
                                   .encode()[:2 * 2**20])
    _qemu_io(src, "write -P 0x41 0 1M",                   # 16 equal blocks
             f"write -s {tmp_path / 'base3'} {3 * BLOCK} 64k",   # = base, same offset
             f"write -s {tmp_path / 'base3'} {20 * 2**20} 64k",  # = base, elsewhere
             "write -z 4M 1M",                            # explicit zeros over the base
             "write -P 0 8M 256k",                        # blocks of zeros, as data
             f"write -s {tmp_path / 'rnd'} 30M 3M", f"write -s {tmp_path / 'txt'} 40M 2M")
    return {"base": base, "src": src, "dst": dst, "dir": tmp_path}


async def _pair(images: dict[str, Path], *, tls: bool, rate: int = 0, streams: int = 2,
                client_cert: str | None = None) -> tuple[JsonLinesChild, JsonLinesChild]:
    common = ["--address", "127.0.0.1", "--port", str(PORT), "--session", "t",
              "--streams", str(streams)]
    send_tls: list[str] = []
    recv_tls: list[str] = []
    if tls:
        ca = DeploymentCa.load_or_create(images["dir"] / "pki")
        m = MigrationTls.create(images["dir"] / "tls", ca, "127.0.0.1", source_name="wc-test")
        send_tls = ["--tls-dir", str(m.source_dir)]
        recv_tls = ["--tls-dir", str(m.dest_dir), "--client-cert",
                    client_cert or cert_fingerprint(m.source_dir / "client-cert.pem")]
    receiver = JsonLinesChild(module_argv(MODULE, ["receive", *common, *recv_tls, "--target",
                                                   str(images["dst"]), "--base",
                                                   str(images["base"])]),
                              name="receiver", error=StorageError)
    await receiver.start(60)
    sender = JsonLinesChild(module_argv(MODULE, ["send", *common, *send_tls, "--source",
                                                 str(images["src"]), "--rate", str(rate)]),
                            name="sender", error=StorageError)
    return receiver, sender


async def _until_final(sender: JsonLinesChild) -> dict[str, Any]:
    while True:
        ev = await sender.next_event("progress", 120)
        if ev.get("final"):
            return ev


def _same(images: dict[str, Path]) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", str(images["src"]),
                           str(images["dst"])]).returncode == 0


async def test_only_what_b_lacks_crosses_compressed_and_b_reads_the_same(images) -> None:
    receiver, sender = await _pair(images, tls=True)
    async with receiver, sender:
        await sender.start(60)
        final = await _until_final(sender)
        await sender.finish("stopped", 30)
        stopped = await receiver.finish("stopped", 30)

    assert _same(images)
    assert final["same_bytes"] == BLOCK               # left out: B's base has it there
    assert final["ref_base_bytes"] == BLOCK           # copied from B's own base
    # 0x41 in 16 blocks, one of them then rewritten with the base block: one crossed
    assert final["ref_stream_bytes"] == 14 * BLOCK
    assert final["zero_bytes"] == 2**20 + 256 * 1024 and final["zero_found_bytes"] == 256 * 1024
    # random data does not shrink, text does: the data crossed smaller than it is
    assert final["data_bytes"] == 3 * 2**20 + 2 * 2**20 + BLOCK
    assert 3 * 2**20 < final["data_wire_bytes"] < 0.8 * final["data_bytes"]
    assert stopped["rejected"] == 0 and sum(stopped["streams"].values()) == stopped["frames"]
    # B holds nothing of its own where it reads the base
    out = subprocess.run(["qemu-img", "map", "--output=json", str(images["dst"])],
                         capture_output=True, text=True, check=True).stdout
    assert f'"start": {3 * BLOCK}, "length": {BLOCK}, "depth": 1' in out


async def test_a_source_certificate_of_another_migration_is_refused(images) -> None:
    # signed by the same CA, but not the certificate issued for this copy
    receiver, sender = await _pair(images, tls=True, client_cert="ab" * 32)
    async with receiver, sender:
        with pytest.raises(StorageError, match="not this migration's source"):
            await sender.start(60)
        stopped = await receiver.finish("stopped", 30)
    # the index connection and the streams (they connect at once) are all refused
    assert stopped["rejected"] >= 1 and stopped["frames"] == 0


async def test_streams_resume_where_they_stopped_when_their_connections_break(images) -> None:
    # 2 MB/s: the copy takes seconds; every connection is destroyed twice on the way
    receiver, sender = await _pair(images, tls=True, rate=2_000_000)
    async with receiver, sender:
        await sender.start(60)
        for _ in range(2):
            await asyncio.sleep(1.0)
            subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", str(PORT)],
                           check=True, capture_output=True)
        final = await _until_final(sender)
        await sender.finish("stopped", 30)
        stopped = await receiver.finish("stopped", 30)

    assert _same(images)
    assert final["reconnects"] >= 2
    # from where B stood, not from zero: far fewer frames resent than the copy has
    assert final["resent_frames"] < stopped["frames"] / 2


async def test_garbage_on_a_connection_is_refused_and_b_keeps_serving(images) -> None:
    receiver, _ = await _pair(images, tls=False)
    async with receiver:
        hello = p.encode_json(p.HELLO, {"session": "t", "version": p.VERSION, "role": "stream",
                                        "stream": 0})
        bad = [b"\x00" * 6, p.encode(p.DATA, b"\x00" * 8), p.encode_block(p.ZERO, 1, 512),
               p.encode_block(p.ZERO, 0, 128 * 2**20), p.encode_block(p.REF, 0, BLOCK, b"x" * 16),
               p.encode_block(p.DATA, 0, BLOCK, b"h" * 16, b"not zstd", p.COMPRESSED),
               p.encode_count(p.DONE, 5), struct_frame(250)]
        for garbage in bad:
            reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
            writer.write(hello + garbage)
            await writer.drain()
            frames = []
            try:
                while True:
                    frames.append(await p.read_frame(reader, p.MAX_JSON))
            except asyncio.IncompleteReadError:
                pass
            writer.close()
            assert [f.type for f in frames][-1] == p.ERROR, garbage
        # still serving: the index answers
        reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
        writer.write(p.encode_json(p.HELLO, {"session": "t", "version": p.VERSION,
                                             "role": "index"}))
        frame = await p.read_frame(reader, p.MAX_INDEX)
        writer.close()
        assert frame.type == p.INDEX
        stopped = await receiver.finish("stopped", 30)
    assert stopped["rejected"] == len(bad) and stopped["data_bytes"] == 0


def struct_frame(ftype: int) -> bytes:
    """A frame header of an unknown type."""
    return bytes([ftype, 0, 0, 0, 0, 0])
