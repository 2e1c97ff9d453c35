"""wancopy's frames: what B accepts is inside its target, anything else is refused."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wanmig.storage.wancopy import protocol as p
from wanmig.storage.wancopy.channel import streams_for
from wanmig.storage.wancopy.warmstart import DEFAULT_INITCWND, MAX_INITCWND, initial_window
from wanmig.wan.profiles import PROFILES

TARGET = 64 * 2**20


def _read(raw: bytes) -> p.Frame:
    async def go() -> p.Frame:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await p.read_frame(reader)
    return asyncio.run(go())


@settings(max_examples=400, deadline=None)
@given(ftype=st.integers(0, 255), flags=st.integers(0, 255), payload=st.binary(max_size=200),
       claimed=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_any_bytes_make_a_frame_or_a_refusal(ftype: int, flags: int, payload: bytes,
                                             claimed: int | None) -> None:
    raw = struct.pack(">BBI", ftype, flags, len(payload) if claimed is None else claimed)
    try:
        frame = _read(raw + payload)
    except (p.ProtocolError, asyncio.IncompleteReadError):
        return
    assert frame.type in p.NAMES and len(frame.payload) <= p.MAX_FRAME


@settings(max_examples=1000, deadline=None)
@given(ftype=st.sampled_from([p.DATA, p.ZERO, p.REF, p.DONE, p.HELLO]),
       flags=st.integers(0, 3), offset=st.integers(0, 2**64 - 1),
       length=st.integers(0, 2**32 - 1), rest=st.binary(max_size=64))
def test_a_block_frame_is_inside_the_target_or_refused(ftype: int, flags: int, offset: int,
                                                       length: int, rest: bytes) -> None:
    frame = p.Frame(ftype, flags, struct.pack(">QI", offset, length) + rest)
    try:
        block = p.decode_block(frame, TARGET)
    except p.ProtocolError:
        return
    assert block.offset % 512 == 0 and block.length % 512 == 0
    assert 0 < block.length and block.offset + block.length <= TARGET
    assert block.length <= (p.MAX_ZERO if block.type == p.ZERO else p.BLOCK)
    if block.type == p.DATA and not block.compressed:
        assert len(block.data) == block.length


@given(offset=st.integers(0, TARGET // p.BLOCK - 1), data=st.binary(min_size=1, max_size=64))
def test_block_frames_read_back_as_sent(offset: int, data: bytes) -> None:
    digest = bytes(range(p.HASH_BYTES))
    raw = p.encode_block(p.DATA, offset * p.BLOCK, p.BLOCK, digest, data, p.COMPRESSED)
    block = p.decode_block(_read(raw), TARGET)
    assert (block.type, block.offset, block.length, block.digest, block.data,
            block.compressed) == (p.DATA, offset * p.BLOCK, p.BLOCK, digest, data, True)
    ref = p.decode_block(_read(p.encode_block(p.REF, 0, p.BLOCK, digest)), TARGET)
    assert ref.type == p.REF and ref.digest == digest and ref.data == b""


def test_json_and_index_frames_refuse_what_is_not_theirs() -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_json(p.Frame(p.HELLO, 0, b"[1, 2]"))
    with pytest.raises(p.ProtocolError):
        p.decode_json(p.Frame(p.HELLO, 0, b"\xff\xfe"))
    with pytest.raises(p.ProtocolError):
        p.decode_count(p.Frame(p.DONE, 0, b"123"))
    with pytest.raises(p.ProtocolError):
        p.decode_index(b"x" * 23)
    records = [(0, b"a" * 16), (p.BLOCK * 7, b"b" * 16)]
    assert p.decode_index(p.encode_index(records)) == records


def test_streams_follow_the_bandwidth_delay_product_and_loss() -> None:
    window = 3 * 2**20
    # one stream's window covers continental's 100 Mbit/s at 50 ms many times over
    assert streams_for(PROFILES["continental"], window) == 1
    # a small window at a long round trip needs several
    assert streams_for(PROFILES["intercontinental"], 256 * 1024) == 8
    # 0.5 % loss at 80 ms holds one cubic stream to a few Mbit/s (Mathis): more streams
    assert streams_for(PROFILES["lossy"], window) > 1
    assert streams_for(None, window) == 1


def test_the_initial_window_is_a_streams_share_of_the_bdp() -> None:
    # continental: 100 Mbit/s x 50 ms = 625 kB, 432 segments of 1448 bytes
    assert initial_window(100e6, 50, 1) == 432
    assert initial_window(100e6, 50, 2) == 216
    # never below Linux's own, never above the cap; unknown rate: Linux's own
    assert initial_window(1e6, 1, 1) == DEFAULT_INITCWND
    assert initial_window(10e9, 250, 1) == MAX_INITCWND
    assert initial_window(None, 50, 1) == DEFAULT_INITCWND
