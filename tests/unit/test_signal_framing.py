"""Length-prefixed framing: sans-IO FrameDecoder and the asyncio read/write helpers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punchthrough.identity import PeerId
from punchthrough.signal import (
    MAX_FRAME_SIZE,
    CheckStart,
    FrameDecoder,
    Hangup,
    Hello,
    MessageTooLarge,
    RelayLookup,
    SignalDecodeError,
    SignalError,
    SignalTimeout,
    UnsupportedVersion,
    encode,
    encode_frame,
    read_message,
    write_message,
)

MESSAGES = [
    Hello(versions=(1,), software="punchthrough/test", features=("datagrams",)),
    RelayLookup(peer_id=PeerId(bytes(range(32)))),
    CheckStart(call_id="c1", stage="hole-punch", start_at_ms=1500, sent_at_ms=1000),
    Hangup(reason="done"),
]
STREAM = b"".join(encode_frame(m) for m in MESSAGES)


def _drain(dec: FrameDecoder) -> list[object]:
    return list(dec.messages())


def test_frame_layout() -> None:
    frame = encode_frame(Hangup(reason="x"))
    assert struct.unpack("!I", frame[:4])[0] == len(frame) - 4
    assert frame[4:] == encode(Hangup(reason="x"))


def test_byte_by_byte() -> None:
    dec = FrameDecoder()
    got = []
    for i in range(len(STREAM)):
        dec.feed(STREAM[i : i + 1])
        got.extend(_drain(dec))
    assert got == MESSAGES
    assert dec.buffered == 0
    dec.eof()  # clean end between frames


@given(st.lists(st.integers(0, len(STREAM)), max_size=10))
def test_any_split(cuts: list[int]) -> None:
    points = sorted({0, len(STREAM), *cuts})
    dec = FrameDecoder()
    got = []
    for a, b in itertools.pairwise(points):
        dec.feed(STREAM[a:b])
        got.extend(_drain(dec))
    assert got == MESSAGES


def test_all_at_once_and_none_pending() -> None:
    dec = FrameDecoder()
    assert dec.next_message() is None
    dec.feed(STREAM)
    assert _drain(dec) == MESSAGES
    assert dec.next_message() is None


def test_oversize_header_is_rejected_before_buffering_and_poisons() -> None:
    dec = FrameDecoder()
    dec.feed(encode_frame(MESSAGES[0]) + struct.pack("!I", MAX_FRAME_SIZE + 1))
    assert dec.next_message() == MESSAGES[0]
    with pytest.raises(MessageTooLarge) as info:
        dec.next_message()
    assert info.value.size == MAX_FRAME_SIZE + 1 and info.value.limit == MAX_FRAME_SIZE
    dec.feed(b"\x00" * 100_000)  # further input is dropped, not buffered
    assert dec.buffered == 0 and dec.failed
    with pytest.raises(MessageTooLarge):
        dec.next_message()


def test_smaller_custom_limit() -> None:
    dec = FrameDecoder(max_frame_size=16)
    dec.feed(encode_frame(MESSAGES[0]))
    with pytest.raises(MessageTooLarge):
        dec.next_message()
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=MAX_FRAME_SIZE + 1)


def test_bad_frame_is_skipped_and_stream_continues() -> None:
    garbage = b"\x00\x00\x00\x03abc"
    dec = FrameDecoder()
    dec.feed(encode_frame(MESSAGES[0]) + garbage + encode_frame(MESSAGES[1]))
    assert dec.next_message() == MESSAGES[0]
    with pytest.raises(SignalDecodeError):
        dec.next_message()
    assert dec.next_message() == MESSAGES[1]
    assert not dec.failed


def test_unknown_version_frame_is_typed() -> None:
    import msgspec

    payload = msgspec.msgpack.encode({"v": 7, "msg": {"type": "hangup"}})
    dec = FrameDecoder()
    dec.feed(struct.pack("!I", len(payload)) + payload + encode_frame(MESSAGES[3]))
    with pytest.raises(UnsupportedVersion):
        dec.next_message()
    assert dec.next_message() == MESSAGES[3]


def test_eof_inside_a_frame() -> None:
    dec = FrameDecoder()
    dec.feed(STREAM[:-1])
    assert _drain(dec) == MESSAGES[:-1]
    with pytest.raises(SignalDecodeError, match="inside a frame"):
        dec.eof()


@settings(max_examples=300)
@given(st.binary(max_size=2048), st.integers(1, 64))
def test_fuzz_frame_decoder(data: bytes, chunk: int) -> None:
    dec = FrameDecoder()
    for i in range(0, len(data), chunk):
        dec.feed(data[i : i + chunk])
        while True:
            try:
                if dec.next_message() is None:
                    break
            except MessageTooLarge:
                assert dec.failed
                return
            except SignalDecodeError:
                continue
    with contextlib.suppress(SignalDecodeError):
        dec.eof()


@settings(max_examples=200)
@given(st.data())
def test_fuzz_mutated_stream(data: st.DataObject) -> None:
    stream = bytearray(STREAM)
    for _ in range(data.draw(st.integers(1, 5))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = data.draw(st.integers(0, 255))
    dec = FrameDecoder()
    dec.feed(bytes(stream))
    for _ in range(len(MESSAGES) + 2):
        try:
            dec.next_message()
        except SignalError:
            if dec.failed:
                break


# --- asyncio helpers --------------------------------------------------------------------------


def _reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    if eof:
        r.feed_eof()
    return r


async def test_read_message_sequence_and_clean_eof() -> None:
    r = _reader(STREAM)
    got = [await read_message(r, timeout=1) for _ in MESSAGES]
    assert got == MESSAGES
    assert await read_message(r, timeout=1) is None


async def test_read_message_truncated() -> None:
    with pytest.raises(SignalDecodeError, match="frame header"):
        await read_message(_reader(STREAM[:2]))
    with pytest.raises(SignalDecodeError, match="inside a frame"):
        await read_message(_reader(encode_frame(MESSAGES[0])[:-1]))


async def test_read_message_oversize_does_not_read_payload() -> None:
    r = _reader(struct.pack("!I", 2**32 - 1), eof=False)
    with pytest.raises(MessageTooLarge):
        await read_message(r, timeout=1)


async def test_read_message_timeout() -> None:
    r = _reader(encode_frame(MESSAGES[0])[:5], eof=False)
    with pytest.raises(SignalTimeout):
        await read_message(r, timeout=0)
    assert isinstance(SignalTimeout("x"), TimeoutError)


class _Writer:
    def __init__(self, block: bool = False) -> None:
        self.data = bytearray()
        self.block = block

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        if self.block:
            await asyncio.Event().wait()


async def test_write_message_then_read_back() -> None:
    w = _Writer()
    for m in MESSAGES:
        await write_message(w, m)
    r = _reader(bytes(w.data))
    assert [await read_message(r) for _ in MESSAGES] == MESSAGES


async def test_write_message_timeout_when_peer_does_not_drain() -> None:
    with pytest.raises(SignalTimeout):
        await write_message(_Writer(block=True), MESSAGES[0], timeout=0)


async def test_over_a_real_loopback_stream() -> None:
    received: list[object] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (msg := await read_message(reader, timeout=5)) is not None:
                received.append(msg)
                await write_message(writer, msg)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for m in MESSAGES:
                await write_message(writer, m)
                assert await read_message(reader, timeout=5) == m
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert received == MESSAGES
