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
from punchthrough.relay.frames import data_header_ok
from punchthrough.transport.demux import PacketKind, classify

PEER = Identity.from_private_bytes(bytes(range(32))).peer_id


def test_data_round_trip_and_layout() -> None:
    frame = encode_data(PEER, b"inner quic packet")
    assert frame[0] == 0x10 and frame[1:33] == PEER.raw and frame[33:] == b"inner quic packet"
    assert classify(frame) is PacketKind.RELAY
    assert decode_frame(frame) == DataFrame(PEER, b"inner quic packet")
    assert data_header_ok(frame)
    big = encode_data(PEER.raw, b"x" * MAX_RELAY_PAYLOAD)
    assert decode_frame(big) == DataFrame(PEER, b"x" * MAX_RELAY_PAYLOAD)


def test_notice_round_trip() -> None:
    frame = encode_notice(1, PEER)
    assert frame == b"\x11\x01" + PEER.raw
    assert classify(frame) is PacketKind.RELAY
    assert decode_frame(frame) == NoticeFrame(1, PEER)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x10",
        b"\x10" + bytes(32),  # header only, no payload
        b"\x10" + bytes(33 + MAX_RELAY_PAYLOAD),  # one byte too many
        b"\x11\x01" + bytes(31),  # truncated notice
        b"\x11\x01" + bytes(33),  # notice with trailing byte
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
        encode_data(PEER, b"")
    with pytest.raises(RelayFrameError):
        encode_data(PEER, b"x" * (MAX_RELAY_PAYLOAD + 1))
    with pytest.raises(RelayFrameError):
        encode_data(b"short", b"x")
    with pytest.raises(RelayFrameError):
        encode_notice(256, PEER)
    assert issubclass(RelayFrameError, ValueError)


def check_decode(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except RelayFrameError:
        assert not data_header_ok(data)
        return
    if isinstance(frame, DataFrame):
        assert data_header_ok(data)
        assert encode_data(frame.peer_id, frame.payload) == data
    else:
        assert encode_notice(frame.code, frame.peer_id) == data


@given(st.binary(max_size=1600))
def test_fuzz_only_typed_error_escapes(data: bytes) -> None:
    check_decode(data)


@given(st.sampled_from([0x10, 0x11, 0x12, 0x13]), st.binary(max_size=1500))
def test_fuzz_relay_range(first: int, rest: bytes) -> None:
    check_decode(bytes([first]) + rest)
