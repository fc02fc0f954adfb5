"""Codec tests: RFC 5769 vectors, every header/attribute rule, round trips."""

from __future__ import annotations

import pytest

from punchthrough.stun import (
    ChangeRequest,
    ErrorCode,
    Fingerprint,
    MappedAddress,
    Message,
    MessageClass,
    MessageIntegrity,
    Method,
    OtherAddress,
    Padding,
    RawAttribute,
    ResponseOrigin,
    ResponsePort,
    Software,
    StunDecodeError,
    StunError,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    decode_message,
    encode,
    long_term_key,
    looks_like_stun,
    short_term_key,
)
from punchthrough.stun.message import decode_message_type, encode_message_type

# RFC 5769 §2 test vectors (hex of the figures).
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
SAMPLE_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
SAMPLE_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
SAMPLE_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)
SAMPLE_LONG_TERM_REQUEST = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b39353464364f4c33346f4c39465354767936347341"
    "0014000b6578616d706c652e6f726700"
    "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
)


def test_rfc5769_sample_request() -> None:
    msg = decode_message(SAMPLE_REQUEST)
    assert msg.method == Method.BINDING
    assert msg.message_class is MessageClass.REQUEST
    assert msg.transaction_id == TXID
    assert msg.get(Software) == Software("STUN test client")
    assert msg.get(Username) == Username("evtj:h6vY")  # padding bytes are 0x20: ignored
    # PRIORITY and ICE-CONTROLLED are not interpreted here: kept raw, PRIORITY is
    # comprehension-required, ICE-CONTROLLED optional.
    assert RawAttribute(0x0024, bytes.fromhex("6e0001ff")) in msg.attributes
    assert msg.unknown_comprehension_required() == [0x0024]
    assert msg.get(Fingerprint) == Fingerprint(0xE57A3BCF)
    assert msg.check_integrity(short_term_key(PASSWORD))
    assert not msg.check_integrity(b"wrong password")


def test_rfc5769_ipv4_response() -> None:
    msg = decode_message(SAMPLE_IPV4_RESPONSE)
    assert msg.message_class is MessageClass.SUCCESS_RESPONSE
    assert msg.get(XorMappedAddress) == XorMappedAddress(("192.0.2.1", 32853))
    assert msg.get(Software) == Software("test vector")
    assert msg.check_integrity(short_term_key(PASSWORD))
    # Our encoder produces the same bytes up to the padding of SOFTWARE (vector pads with 0x20,
    # we pad with zero) and therefore the same MESSAGE-INTEGRITY over the zero-padded input.
    ours = encode(
        Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, TXID, msg.attributes),
        integrity_key=short_term_key(PASSWORD),
        fingerprint=True,
    )
    assert len(ours) == len(SAMPLE_IPV4_RESPONSE)
    space_at = 20 + 4 + 11
    assert ours[:space_at] == SAMPLE_IPV4_RESPONSE[:space_at]
    assert ours[space_at] == 0 and SAMPLE_IPV4_RESPONSE[space_at] == 0x20
    assert ours[space_at + 1 : 48] == SAMPLE_IPV4_RESPONSE[space_at + 1 : 48]
    again = decode_message(ours)
    assert again.attributes[:2] == msg.attributes[:2]
    assert again.check_integrity(short_term_key(PASSWORD))


def test_rfc5769_ipv6_response() -> None:
    msg = decode_message(SAMPLE_IPV6_RESPONSE)
    assert msg.get(XorMappedAddress) == XorMappedAddress(
        ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    )
    assert msg.check_integrity(short_term_key(PASSWORD))
    value = XorMappedAddress(("2001:db8:1234:5678:11:2233:4455:6677", 32853)).encode_value(TXID)
    assert value == SAMPLE_IPV6_RESPONSE[40:60]


def test_rfc5769_long_term_request() -> None:
    msg = decode_message(SAMPLE_LONG_TERM_REQUEST)
    assert msg.get(Username) == Username("\u30de\u30c8\u30ea\u30c3\u30af\u30b9")
    key = long_term_key("\u30de\u30c8\u30ea\u30c3\u30af\u30b9", "example.org", "TheMatrIX")
    assert msg.check_integrity(key)
    assert not msg.check_integrity(short_term_key("TheMatrIX"))


@pytest.mark.parametrize("vector", [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE])
def test_any_flipped_bit_is_rejected_or_fails_integrity(vector: bytes) -> None:
    """Every single-bit change is caught: by the header rules, by FINGERPRINT's CRC, or (when the
    flip renames FINGERPRINT into an attribute after MESSAGE-INTEGRITY, which is ignored) by the
    authenticated content being unchanged."""
    key = short_term_key(PASSWORD)
    original = decode_message(vector).attributes[:-1]  # all but FINGERPRINT
    for i in range(len(vector)):
        for bit in range(8):
            data = bytearray(vector)
            data[i] ^= 1 << bit
            try:
                msg = decode_message(bytes(data))
            except StunDecodeError:
                continue
            if msg.check_integrity(key):
                assert i >= len(vector) - 8, f"flip of bit {bit} in byte {i} went unnoticed"
                assert msg.attributes == original and msg.ignored_after_integrity == 1


def test_message_type_interleaving() -> None:
    assert encode_message_type(Method.BINDING, MessageClass.REQUEST) == 0x0001
    assert encode_message_type(Method.BINDING, MessageClass.INDICATION) == 0x0011
    assert encode_message_type(Method.BINDING, MessageClass.SUCCESS_RESPONSE) == 0x0101
    assert encode_message_type(Method.BINDING, MessageClass.ERROR_RESPONSE) == 0x0111
    for method in (0x000, 0x001, 0x00F, 0x010, 0x07F, 0x080, 0xFFF):
        for klass in MessageClass:
            assert decode_message_type(encode_message_type(method, klass)) == (method, klass)
    with pytest.raises(ValueError):
        encode_message_type(0x1000, MessageClass.REQUEST)


def _header(length: int, first: int = 0x00, cookie: bytes = b"\x21\x12\xa4\x42") -> bytes:
    return bytes((first, 0x01)) + length.to_bytes(2, "big") + cookie + TXID


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"", "shorter than the 20-byte header"),
        (_header(0)[:19], "shorter than the 20-byte header"),
        (_header(0, first=0x40), "first two bits"),
        (_header(0, first=0x80), "first two bits"),
        (_header(0, cookie=b"\x21\x12\xa4\x43"), "magic cookie"),
        (_header(2) + b"\x00\x00", "not a multiple of 4"),
        (_header(4), "does not match"),
        (_header(0) + b"\x00\x00\x00\x00", "does not match"),
        (_header(4) + b"\x80\x22\x00\x08", "overruns the message"),
        (_header(4) + b"\x80\x22\x00\x01", "overruns the message"),
        (_header(8) + b"\x00\x20\x00\x04\x00\x03\x00\x00", "unknown address family"),
        (_header(8) + b"\x00\x20\x00\x04\x00\x01\x00\x00", "needs a 8-byte value"),
        (_header(4) + b"\x00\x01\x00\x00", "at least 4"),
        (_header(8) + b"\x00\x06\x00\x02\xff\xfe\x00\x00", "not valid UTF-8"),
        (_header(8) + b"\x80\x22\x00\x01\x80\x00\x00\x00", "not valid UTF-8"),
        (_header(8) + b"\x00\x09\x00\x04\x00\x00\x07\x00", "class 7 outside 3..6"),
        (_header(8) + b"\x00\x09\x00\x04\x00\x00\x04\x64", "number 100 above 99"),
        (_header(4) + b"\x00\x09\x00\x00", "needs at least 4"),
        (_header(8) + b"\x00\x0a\x00\x03\x00\x01\x00\x00", "odd value length"),
        (_header(8) + b"\x00\x08\x00\x04\x00\x00\x00\x00", "MESSAGE-INTEGRITY: value must be 20"),
        (_header(8) + b"\x00\x03\x00\x02\x00\x00\x00\x00", "CHANGE-REQUEST: value must be 4"),
        (_header(8) + b"\x00\x27\x00\x02\x00\x00\x00\x00", "RESPONSE-PORT: value must be 4"),
        (_header(8) + b"\x80\x28\x00\x04\x00\x00\x00\x00", "FINGERPRINT does not match"),
        (_header(8) + b"\x80\x28\x00\x02\x00\x00\x00\x00", "FINGERPRINT: value must be 4"),
    ],
)
def test_malformed_input_names_the_rule(data: bytes, rule: str) -> None:
    with pytest.raises(StunDecodeError, match=rule) as info:
        decode_message(data)
    assert isinstance(info.value, StunError)


def test_zero_length_attribute_at_the_end() -> None:
    data = _header(4) + b"\x80\x22\x00\x00"
    assert decode_message(data).get(Software) == Software("")


def test_duplicate_interpreted_attribute_is_an_error() -> None:
    attr = b"\x80\x22\x00\x04abcd"
    with pytest.raises(StunDecodeError, match="duplicate SOFTWARE"):
        decode_message(_header(16) + attr + attr)


def test_duplicate_raw_attributes_are_all_kept() -> None:
    attr = b"\x80\x99\x00\x04abcd"
    msg = decode_message(_header(16) + attr + attr)
    assert msg.attributes == [RawAttribute(0x8099, b"abcd")] * 2
    assert msg.unknown_comprehension_required() == []


def test_attribute_after_fingerprint_is_rejected() -> None:
    data = encode(Message(Method.BINDING, MessageClass.REQUEST, TXID), fingerprint=True)
    body = data[20:] + b"\x80\x22\x00\x00"
    with pytest.raises(StunDecodeError, match="follows FINGERPRINT"):
        decode_message(_header(len(body)) + body)


def test_attributes_after_message_integrity_are_ignored() -> None:
    key = b"k"
    base = encode(
        Message(Method.BINDING, MessageClass.REQUEST, TXID, [Username("u")]), integrity_key=key
    )
    # Append SOFTWARE after MESSAGE-INTEGRITY, then a valid FINGERPRINT over all of it.
    tail = b"\x80\x22\x00\x04evil"
    with_tail = base[:2] + (len(base) - 20 + len(tail)).to_bytes(2, "big") + base[4:] + tail
    msg = decode_message(with_tail)
    assert msg.get(Software) is None
    assert msg.ignored_after_integrity == 1
    assert msg.check_integrity(key)
    # Even an otherwise-invalid or duplicate attribute after it is not interpreted.
    dup = b"\x00\x06\x00\x02\xff\xfe\x00\x00"
    bad = base[:2] + (len(base) - 20 + len(dup)).to_bytes(2, "big") + base[4:] + dup
    assert decode_message(bad).get(Username) == Username("u")


def test_fingerprint_after_integrity_is_checked() -> None:
    data = encode(
        Message(Method.BINDING, MessageClass.REQUEST, TXID, [Username("u")]),
        integrity_key=b"k",
        fingerprint=True,
    )
    msg = decode_message(data)
    assert [type(a) for a in msg.attributes] == [Username, MessageIntegrity, Fingerprint]
    assert msg.check_integrity(b"k")
    broken = data[:-1] + bytes([data[-1] ^ 0xFF])
    with pytest.raises(StunDecodeError, match="FINGERPRINT"):
        decode_message(broken)


def test_integrity_detects_tampering_without_fingerprint() -> None:
    data = bytearray(
        encode(
            Message(Method.BINDING, MessageClass.REQUEST, TXID, [Username("user")]),
            integrity_key=b"k",
        )
    )
    data[25] ^= 0x01  # inside USERNAME
    msg = decode_message(bytes(data))
    assert not msg.check_integrity(b"k")
    assert not decode_message(
        encode(Message(Method.BINDING, MessageClass.REQUEST))
    ).check_integrity(b"k")


def test_round_trip_every_attribute() -> None:
    attrs = [
        MappedAddress(("192.0.2.7", 1)),
        XorMappedAddress(("2001:db8::1", 65535)),
        ResponseOrigin(("198.51.100.1", 3478)),
        OtherAddress(("2001:db8::ffff:cb00:7109", 3479)),
        Username("\u00fcser"),
        Software("punchthrough 0.1"),
        ErrorCode(420, "Unknown Attribute"),
        UnknownAttributes((0x0024, 0x7FFF, 0x0001)),
        ChangeRequest(change_ip=True, change_port=False),
        ResponsePort(40000),
        Padding(13),
        RawAttribute(0x7ABC, b"\x01\x02\x03"),
    ]
    msg = Message(0x123, MessageClass.ERROR_RESPONSE, TXID, attrs)
    data = encode(msg, integrity_key=b"secret", fingerprint=True)
    assert len(data) % 4 == 0
    out = decode_message(data)
    assert out.attributes[: len(attrs)] == attrs
    assert out.method == 0x123 and out.message_class is MessageClass.ERROR_RESPONSE
    assert out.check_integrity(b"secret")
    assert out.unknown_comprehension_required() == [0x7ABC]
    assert looks_like_stun(data)


def test_change_request_flags_on_the_wire() -> None:
    assert ChangeRequest(True, True).encode_value(TXID) == b"\x00\x00\x00\x06"
    assert ChangeRequest(True, False).encode_value(TXID) == b"\x00\x00\x00\x04"
    assert ChangeRequest(False, True).encode_value(TXID) == b"\x00\x00\x00\x02"


def test_looks_like_stun() -> None:
    assert looks_like_stun(SAMPLE_REQUEST)
    assert not looks_like_stun(b"\x40" + SAMPLE_REQUEST[1:])
    assert not looks_like_stun(SAMPLE_REQUEST[:19])
    assert not looks_like_stun(SAMPLE_REQUEST[:4] + b"\x00\x00\x00\x00" + SAMPLE_REQUEST[8:])


def test_encoder_rejects_invalid_values() -> None:
    with pytest.raises(ValueError):
        encode(Message(Method.BINDING, MessageClass.REQUEST, b"short"))
    with pytest.raises(ValueError):
        encode(Message(Method.BINDING, MessageClass.ERROR_RESPONSE, TXID, [ErrorCode(200)]))
    with pytest.raises(ValueError):
        encode(Message(Method.BINDING, MessageClass.REQUEST, TXID, [Software("x" * 764)]))
