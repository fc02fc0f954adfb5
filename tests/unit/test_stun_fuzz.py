"""Property tests: the decoder only ever raises StunDecodeError, agrees with aioice on valid
messages, and the server core survives anything without amplifying."""

from __future__ import annotations

from typing import Any

import aioice.stun as aioice_stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from punchthrough.stun import (
    Attribute,
    ChangeRequest,
    ErrorCode,
    MappedAddress,
    Message,
    MessageClass,
    OtherAddress,
    ResponseOrigin,
    Software,
    StunDecodeError,
    StunServerCore,
    Username,
    XorMappedAddress,
    decode_message,
    encode,
)
from punchthrough.stun.constants import AttributeType

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda ip: ip.compressed)
addresses = st.tuples(st.one_of(ipv4, ipv6), st.integers(0, 65535))
text = st.text(max_size=60)


def _attribute_strategies() -> list[st.SearchStrategy[Attribute]]:
    return [
        addresses.map(MappedAddress),
        addresses.map(XorMappedAddress),
        addresses.map(ResponseOrigin),
        addresses.map(OtherAddress),
        text.map(Username),
        text.map(Software),
        st.builds(ErrorCode, st.integers(300, 699), text),
        st.builds(ChangeRequest, st.booleans(), st.booleans()),
    ]


attribute_lists = st.lists(
    st.one_of(_attribute_strategies()), max_size=8, unique_by=lambda a: a.type_code
)
# Methods aioice knows, so both parsers accept them.
aioice_methods = st.sampled_from([int(m) for m in aioice_stun.Method])
messages = st.builds(
    Message,
    aioice_methods,
    st.sampled_from(list(MessageClass)),
    st.binary(min_size=12, max_size=12),
    attribute_lists,
)
keys = st.one_of(st.none(), st.binary(min_size=1, max_size=32))


@st.composite
def encoded_messages(draw: st.DrawFn) -> bytes:
    return encode(draw(messages), integrity_key=draw(keys), fingerprint=draw(st.booleans()))


def _decode_or_reject(data: bytes) -> Message | None:
    try:
        return decode_message(data)
    except StunDecodeError:
        return None


# --- the decoder never leaks another exception ------------------------------------------------


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes(data: bytes) -> None:
    _decode_or_reject(data)


@st.composite
def framed_garbage(draw: st.DrawFn) -> bytes:
    """A valid header and a body of TLVs with interesting types and random values/lengths."""
    interesting = st.sampled_from([int(t) for t in AttributeType] + [0x0024, 0x7FFF, 0xFFFF])
    body = b""
    for _ in range(draw(st.integers(0, 6))):
        attr_type = draw(st.one_of(interesting, st.integers(0, 0xFFFF)))
        value = draw(st.binary(max_size=40))
        declared = draw(st.one_of(st.just(len(value)), st.integers(0, 0xFFFF)))
        pad = (-len(value)) % 4
        body += attr_type.to_bytes(2, "big") + declared.to_bytes(2, "big") + value + bytes(pad)
    method_class = draw(st.integers(0, 0x3FFF))
    header = (
        method_class.to_bytes(2, "big")
        + len(body).to_bytes(2, "big")
        + b"\x21\x12\xa4\x42"
        + draw(st.binary(min_size=12, max_size=12))
    )
    return header + body


@FUZZ
@given(framed_garbage())
def test_framed_garbage(data: bytes) -> None:
    _decode_or_reject(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(encoded_messages()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "set_length", "set_attr_len"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "set_length" and len(data) >= 4:
            data[2:4] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        elif op == "set_attr_len" and len(data) >= 24:
            data[22:24] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_valid_messages(data: bytes) -> None:
    _decode_or_reject(data)


# --- agreement with aioice on valid messages --------------------------------------------------

_AIOICE_CLASS = {
    MessageClass.REQUEST: aioice_stun.Class.REQUEST,
    MessageClass.INDICATION: aioice_stun.Class.INDICATION,
    MessageClass.SUCCESS_RESPONSE: aioice_stun.Class.RESPONSE,
    MessageClass.ERROR_RESPONSE: aioice_stun.Class.ERROR,
}


def _aioice_view(attr: Attribute) -> tuple[str, Any]:
    name = AttributeType(attr.type_code).name.replace("_", "-")
    if isinstance(attr, MappedAddress | XorMappedAddress | ResponseOrigin | OtherAddress):
        return name, attr.address
    if isinstance(attr, Username | Software):
        return name, attr.value
    if isinstance(attr, ErrorCode):
        return name, (attr.code, attr.reason)
    if isinstance(attr, ChangeRequest):
        return name, (4 if attr.change_ip else 0) | (2 if attr.change_port else 0)
    raise AssertionError(attr)


@FUZZ
@given(messages, keys, st.booleans())
def test_agrees_with_aioice(message: Message, key: bytes | None, fingerprint: bool) -> None:
    data = encode(message, integrity_key=key, fingerprint=fingerprint)
    ours = decode_message(data)
    theirs = aioice_stun.parse_message(data)
    assert int(theirs.message_method) == ours.method == message.method
    assert theirs.message_class == _AIOICE_CLASS[ours.message_class]
    assert theirs.transaction_id == ours.transaction_id == message.transaction_id
    assert ours.attributes[: len(message.attributes)] == message.attributes
    expected = dict(_aioice_view(a) for a in message.attributes)
    got = {k: v for k, v in theirs.attributes.items() if k in expected}
    assert got == expected
    if key is not None:
        assert ours.check_integrity(key) and theirs.check_message_integrity(key)
    if fingerprint:
        assert "FINGERPRINT" in theirs.attributes


# --- the server core: never raises, never amplifies -------------------------------------------

LOCAL = ("192.0.2.10", 3478)
SRC = ("198.51.100.20", 50000)


def _check_server(core: StunServerCore, data: bytes) -> None:
    for payload, from_addr, dest in core.handle(data, SRC, LOCAL):
        assert len(payload) <= 3 * len(data)
        assert from_addr in core.addresses
        assert dest[0] == SRC[0]
        decode_message(payload)  # whatever we send is well-formed


_cores = [
    StunServerCore([LOCAL]),
    StunServerCore([LOCAL], "192.0.2.11", software="punchthrough test server"),
]


@FUZZ
@given(st.one_of(st.binary(max_size=128), framed_garbage(), mutated(), encoded_messages()))
def test_server_core_survives_anything(data: bytes) -> None:
    for core in _cores:
        _check_server(core, data)
