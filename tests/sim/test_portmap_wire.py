"""NAT-PMP / PCP codecs: round trips, RFC layouts, and fuzzing (only the typed error escapes)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from punchthrough.portmap import natpmp_wire as pmp
from punchthrough.portmap import pcp_wire as pcp

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))


def test_natpmp_request_layout_rfc6886() -> None:
    assert pmp.encode_request(pmp.ExternalAddressRequest()) == b"\x00\x00"
    raw = pmp.encode_request(pmp.MapRequest(pmp.OP_MAP_UDP, 5000, 6000, 7200))
    assert raw == struct.pack("!BBHHHI", 0, 1, 0, 5000, 6000, 7200)
    assert pmp.decode_request(raw) == pmp.MapRequest(1, 5000, 6000, 7200)


@given(st.sampled_from([1, 2]), u16, u16, u32)
def test_natpmp_map_roundtrip(proto: int, internal: int, external: int, life: int) -> None:
    if internal == 0:
        life = 0
    req = pmp.MapRequest(proto, internal, external, life)
    assert pmp.decode_request(pmp.encode_request(req)) == req
    resp = pmp.MapResponse(proto, 0, life, internal, external, life)
    assert pmp.decode_response(pmp.encode_response(resp)) == resp


@given(u16, u32, ipv4)
def test_natpmp_address_response_roundtrip(result: int, epoch: int, ip: str) -> None:
    resp = pmp.ExternalAddressResponse(result, epoch, ip)
    raw = pmp.encode_response(resp)
    assert len(raw) == 12 and raw[1] == 128
    assert pmp.decode_response(raw) == resp


def test_natpmp_errors_carry_result_codes() -> None:
    with pytest.raises(pmp.NatPmpDecodeError) as ei:
        pmp.decode_request(b"\x01\x00")
    assert ei.value.result_code == pmp.RESULT_UNSUPPORTED_VERSION
    with pytest.raises(pmp.NatPmpDecodeError) as ei:
        pmp.decode_request(b"\x00\x07")
    assert ei.value.result_code == pmp.RESULT_UNSUPPORTED_OPCODE and ei.value.opcode == 7
    with pytest.raises(pmp.NatPmpDecodeError) as ei:
        pmp.decode_request(b"\x00\x01\x00")  # truncated map request: drop silently
    assert ei.value.result_code is None
    short = pmp.encode_response(pmp.ErrorResponse(1, pmp.RESULT_NOT_AUTHORIZED, 5))
    assert pmp.decode_response(short) == pmp.ErrorResponse(1, 2, 5)


@given(st.binary(max_size=40))
def test_natpmp_decoders_fuzz(data: bytes) -> None:
    for decode in (pmp.decode_request, pmp.decode_response):
        with contextlib.suppress(pmp.NatPmpDecodeError):
            decode(data)


def _map(nonce: bytes = b"\x01" * 12) -> pcp.MapData:
    return pcp.MapData(nonce, pcp.PROTO_UDP, 5000, 6000, "0.0.0.0")


def test_pcp_map_request_layout_rfc6887() -> None:
    req = pcp.PcpRequest(pcp.OP_MAP, 3600, "10.0.1.2", _map())
    raw = pcp.encode_request(req)
    assert len(raw) == 60  # 24 header + 36 MAP
    assert raw[:4] == b"\x02\x01\x00\x00" and raw[4:8] == struct.pack("!I", 3600)
    assert raw[8:24] == b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, 1, 2])
    assert raw[24:36] == b"\x01" * 12 and raw[36] == 17
    assert pcp.decode_request(raw) == req


nonces = st.binary(min_size=12, max_size=12)
options = st.lists(
    st.builds(pcp.PcpOption, st.integers(0, 255), st.binary(max_size=20)), max_size=3
).map(tuple)


@given(nonces, st.integers(0, 255), u16, u16, ipv4, u32, ipv4, options)
def test_pcp_roundtrip(
    nonce: bytes,
    proto: int,
    internal: int,
    external: int,
    ext_ip: str,
    life: int,
    client: str,
    opts: tuple[pcp.PcpOption, ...],
) -> None:
    m = pcp.MapData(nonce, proto, internal, external, ext_ip)
    req = pcp.PcpRequest(pcp.OP_MAP, life, client, m, None, opts)
    assert pcp.decode_request(pcp.encode_request(req)) == req
    peer = pcp.PeerData(m, 443, "2001:db8::1")
    resp = pcp.PcpResponse(pcp.OP_PEER, pcp.SUCCESS, life, 7, None, peer, opts)
    assert pcp.decode_response(pcp.encode_response(resp)) == resp


def test_pcp_error_codes() -> None:
    good = pcp.encode_request(pcp.PcpRequest(pcp.OP_MAP, 10, "10.0.1.2", _map()))
    cases = [
        (b"\x01" + good[1:], pcp.UNSUPP_VERSION),
        (good[:-4], pcp.MALFORMED_REQUEST),  # MAP payload truncated
        (good + b"\x00\x00", pcp.MALFORMED_REQUEST),  # not a multiple of 4
        (good[:1] + b"\x05" + good[2:], pcp.UNSUPP_OPCODE),
        (good + b"\x01\x00\x00\x08", pcp.MALFORMED_OPTION),  # option overruns
    ]
    for raw, code in cases:
        with pytest.raises(pcp.PcpDecodeError) as ei:
            pcp.decode_request(raw)
        assert ei.value.result_code == code, raw
    with pytest.raises(pcp.PcpDecodeError) as ei:
        pcp.decode_request(good[:1] + b"\x81" + good[2:])  # R bit: drop silently
    assert ei.value.result_code is None


@given(st.binary(max_size=120))
def test_pcp_decoders_fuzz(data: bytes) -> None:
    for decode in (pcp.decode_request, pcp.decode_response):
        with contextlib.suppress(pcp.PcpDecodeError):
            decode(data)


@given(st.binary(min_size=24, max_size=100).map(lambda b: b[: len(b) - len(b) % 4]))
def test_pcp_request_fuzz_with_valid_header(tail: bytes) -> None:
    data = b"\x02\x01" + tail[2:]
    with contextlib.suppress(pcp.PcpDecodeError):
        pcp.decode_request(data)
