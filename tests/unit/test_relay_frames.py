"""Relay data-plane codec: round trips, exact rejections, and fuzzing (only RelayFrameError)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from punchthrough.identity import Identity
from punchthrough.relay import (
    MAX_RELAY_PAYLOAD,
    DataFrame,
    NoticeFrame,
    RelayFrameError,
    decode_frame,
    encode_data,
    encode_notice,
)
from punchthrough.relay.frames import data_header_ok, encode_send
from punchthrough.transport.demux import PacketKind, classify

PEER = Identity.from_private_bytes(bytes(range(32))).peer_id
TOKEN = bytes(range(100, 108))


def test_data_round_trip_and_layout() -> None:
    frame = encode_data(PEER, TOKEN, b"inner quic packet")
    assert frame[0] == 0x10 and frame[1:33] == PEER.raw
    assert frame[33:41] == TOKEN and frame[41:] == b"inner quic packet"
    assert classify(frame) is PacketKind.RELAY
    assert decode_frame(frame) == DataFrame(PEER, TOKEN, b"inner quic packet")
    assert data_header_ok(frame)
    big = encode_data(PEER.raw, TOKEN, b"x" * MAX_RELAY_PAYLOAD)
    assert decode_frame(big) == DataFrame(PEER, TOKEN, b"x" * MAX_RELAY_PAYLOAD)


def test_send_has_the_data_layout_under_its_own_type() -> None:
    frame = encode_send(PEER, TOKEN, b"inner")
    assert frame == b"\x12" + PEER.raw + TOKEN + b"inner"


def test_notice_round_trip_and_never_longer_than_the_shortest_send() -> None:
    frame = encode_notice(1, PEER, TOKEN)
    assert frame == b"\x11\x01" + PEER.raw + TOKEN
    assert classify(frame) is PacketKind.RELAY
    assert decode_frame(frame) == NoticeFrame(1, PEER, TOKEN)
    assert len(frame) <= len(encode_send(PEER, TOKEN, b"x"))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x10",
        b"\x10" + bytes(40),  # header only, no payload
        b"\x10" + bytes(41 + MAX_RELAY_PAYLOAD),  # one byte too many
        b"\x11\x01" + bytes(39),  # truncated notice
        b"\x11\x01" + bytes(41),  # notice with trailing byte
        b"\x12" + bytes(40),  # reserved type
        b"\x13" + bytes(40),
        b"\x00" + bytes(40),  # not a relay frame at all
    ],
)
def test_malformed_frames_raise_the_typed_error(data: bytes) -> None:
    with pytest.raises(RelayFrameError):
        decode_frame(data)
    assert not data_header_ok(data)


def test_encoder_refuses_what_the_relay_would_drop() -> None:
    with pytest.raises(RelayFrameError):
        encode_data(PEER, TOKEN, b"")
    with pytest.raises(RelayFrameError):
        encode_data(PEER, TOKEN, b"x" * (MAX_RELAY_PAYLOAD + 1))
    with pytest.raises(RelayFrameError):
        encode_data(b"short", TOKEN, b"x")
    with pytest.raises(RelayFrameError):
        encode_data(PEER, b"short", b"x")
    with pytest.raises(RelayFrameError):
        encode_notice(256, PEER, TOKEN)
    assert issubclass(RelayFrameError, ValueError)


def check_decode(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except RelayFrameError:
        assert not data_header_ok(data)
        return
    if isinstance(frame, DataFrame):
        assert data_header_ok(data)
        assert encode_data(frame.peer_id, frame.token, frame.payload) == data
    else:
        assert encode_notice(frame.code, frame.peer_id, frame.token) == data


@given(st.binary(max_size=1600))
def test_fuzz_only_typed_error_escapes(data: bytes) -> None:
    check_decode(data)


@given(st.sampled_from([0x10, 0x11, 0x12, 0x13]), st.binary(max_size=1500))
def test_fuzz_relay_range(first: int, rest: bytes) -> None:
    check_decode(bytes([first]) + rest)
