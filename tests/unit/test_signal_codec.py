"""Signal messages: round trips for every type, validation caps, versions, and decoder fuzzing."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punchthrough.identity import PeerId
from punchthrough.signal import (
    MAX_ACCEPTOR_PORTS,
    MAX_CANDIDATES,
    MAX_MESSAGE_SIZE,
    MAX_PORT_SEQUENCE,
    MESSAGE_TYPES,
    Candidate,
    Candidates,
    CandidateUpdate,
    CheckStart,
    Hangup,
    HardNatBirthdayStart,
    HardNatProbe,
    Hello,
    Message,
    MessageTooLarge,
    NatReportSummary,
    PeerAuth,
    Ping,
    Pong,
    RelayAddress,
    RelayError,
    RelayLookup,
    RelayLookupResult,
    RelayRegister,
    RelayRegistered,
    SignalDecodeError,
    SignalEncodeError,
    UnsupportedVersion,
    decode,
    encode,
    format_allocation,
    negotiate_version,
    parse_allocation,
)

# --- strategies -----------------------------------------------------------------------------

ports = st.integers(1, 65535)
u32 = st.integers(0, 2**32 - 1)
millis = st.integers(0, 2**53)
peer_ids = st.binary(min_size=32, max_size=32).map(PeerId)
sigs = st.binary(min_size=64, max_size=64)
call_ids = st.from_regex(r"\A[A-Za-z0-9_.:-]{1,64}\Z")
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
reasons = st.text(max_size=256)
foundations = st.from_regex(r"\A[A-Za-z0-9+/]{1,32}\Z")
behaviors: st.SearchStrategy[Any] = st.sampled_from(
    ["endpoint-independent", "address-dependent", "address-and-port-dependent", "unknown"]
)
deltas = st.integers(-65535, 65535).filter(bool)
allocation_texts = st.one_of(
    st.sampled_from(["preserving", "random", "unknown"]),
    deltas.map(lambda d: f"sequential:{d}"),
)

candidates = st.builds(
    Candidate,
    kind=st.sampled_from(["host", "srflx", "prflx", "mapped", "relay"]),
    address=ips,
    port=ports,
    priority=u32,
    foundation=foundations,
)
candidate_tuples = st.lists(candidates, max_size=8).map(tuple)


@st.composite
def nat_reports(draw: st.DrawFn) -> NatReportSummary:
    allocation = draw(st.sampled_from(["port-preserving", "sequential", "random", "unknown"]))
    delta = draw(deltas) if allocation == "sequential" else draw(st.none() | deltas)
    lo = draw(ports)
    return NatReportSummary(
        udp=draw(st.booleans()),
        mapping=draw(behaviors),
        filtering=draw(behaviors),
        allocation=allocation,  # type: ignore[arg-type]
        delta=delta,
        port_range=draw(st.none() | st.integers(lo, 65535).map(lambda hi: (lo, hi))),
        public_ip=draw(st.none() | ips),
        preserves_port=draw(st.none() | st.booleans()),
        hairpinning=draw(st.none() | st.booleans()),
        port_mapping=tuple(draw(st.lists(st.sampled_from(["nat-pmp", "pcp", "upnp"]), max_size=3))),
        binding_lifetime_ms=draw(st.none() | millis),
    )


@st.composite
def birthday_starts(draw: st.DrawFn) -> HardNatBirthdayStart:
    acceptor_ports = tuple(draw(st.lists(ports, max_size=40)))
    return HardNatBirthdayStart(
        call_id=draw(call_ids),
        acceptor_port_count=draw(st.integers(max(1, len(acceptor_ports)), MAX_ACCEPTOR_PORTS)),
        acceptor_ports=acceptor_ports,
        start_at_ms=draw(millis),
        sent_at_ms=draw(st.none() | millis),
    )


STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(
        Hello,
        versions=st.lists(st.integers(1, 65535), min_size=1, max_size=16).map(tuple),
        software=st.text(max_size=64),
        features=st.lists(st.from_regex(r"\A[a-z0-9_.-]{1,32}\Z"), max_size=32).map(tuple),
    ),
    PeerAuth: st.builds(PeerAuth, peer_id=peer_ids, signature=sigs),
    Candidates: st.builds(Candidates, candidates=candidate_tuples),
    CandidateUpdate: st.builds(CandidateUpdate, generation=u32, candidates=candidate_tuples),
    NatReportSummary: nat_reports(),
    HardNatProbe: st.builds(
        HardNatProbe,
        call_id=call_ids,
        port_sequence=st.lists(ports, min_size=1, max_size=MAX_PORT_SEQUENCE).map(tuple),
        allocation=allocation_texts,
        probe_time_ms=millis,
        external_ip=ips,
    ),
    HardNatBirthdayStart: birthday_starts(),
    CheckStart: st.builds(
        CheckStart,
        call_id=call_ids,
        stage=st.sampled_from(["hole-punch", "port-prediction", "birthday"]),
        generation=u32,
        start_at_ms=millis,
        sent_at_ms=millis,
    ),
    Ping: st.builds(Ping, nonce=u32, sent_at_ms=millis),
    Pong: st.builds(Pong, nonce=u32, echo_sent_at_ms=millis, sent_at_ms=millis),
    Hangup: st.builds(Hangup, reason=reasons),
    RelayRegister: st.builds(RelayRegister, peer_id=peer_ids, timestamp_ms=millis, signature=sigs),
    RelayRegistered: st.builds(
        RelayRegistered,
        peer_id=peer_ids,
        observed_ip=ips,
        observed_port=ports,
        keepalive_ms=st.integers(1, 3_600_000),
        frame_token=st.binary(min_size=8, max_size=8),
    ),
    RelayError: st.builds(RelayError, code=st.integers(100, 999), reason=reasons),
    RelayLookup: st.builds(RelayLookup, peer_id=peer_ids),
    RelayLookupResult: st.builds(
        RelayLookupResult,
        peer_id=peer_ids,
        found=st.booleans(),
        relays=st.lists(
            st.builds(RelayAddress, host=st.from_regex(r"\A[a-z0-9.-]{1,253}\Z"), port=ports),
            max_size=16,
        ).map(tuple),
    ),
}
any_message = st.one_of(*STRATEGIES.values())


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(MESSAGE_TYPES)
    tags = [t.__struct_config__.tag for t in MESSAGE_TYPES]
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[cls])
    wire = encode(msg)
    back = decode(wire)
    assert type(back) is cls
    assert back == msg
    assert encode(back) == wire


def test_wire_format_is_the_documented_envelope() -> None:
    wire = encode(Hangup(reason="bye"))
    assert msgspec.msgpack.decode(wire) == {"v": 1, "msg": {"type": "hangup", "reason": "bye"}}
    pid = PeerId(bytes(range(32)))
    raw = msgspec.msgpack.decode(encode(RelayLookup(peer_id=pid)))
    assert raw["msg"]["peer_id"] == pid.raw  # peer ids travel as 32 raw bytes


def test_largest_legal_messages_fit() -> None:
    cand = Candidate(
        kind="srflx",
        address="ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        port=65535,
        priority=2**32 - 1,
        foundation="f" * 32,
    )
    biggest = [
        CandidateUpdate(generation=2**32 - 1, candidates=(cand,) * MAX_CANDIDATES),
        HardNatBirthdayStart(
            call_id="c" * 64,
            acceptor_port_count=MAX_ACCEPTOR_PORTS,
            acceptor_ports=(65535,) * MAX_ACCEPTOR_PORTS,
            start_at_ms=2**53,
            sent_at_ms=2**53,
        ),
        Hello(versions=(65535,) * 16, software="s" * 64, features=("f" * 32,) * 32),
        Hangup(reason="\U0001f600" * 256),
    ]
    for msg in biggest:
        assert len(encode(msg)) <= MAX_MESSAGE_SIZE


# --- validation -----------------------------------------------------------------------------


def _wire(msg: dict[str, object], v: object = 1) -> bytes:
    return msgspec.msgpack.encode({"v": v, "msg": msg})


PROBE = {
    "type": "hard-nat-probe",
    "call_id": "c1",
    "port_sequence": [1000, 1001],
    "allocation": "sequential:1",
    "probe_time_ms": 5,
    "external_ip": "203.0.113.7",
}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"port_sequence": [0]}, r"port_sequence\[0\]"),
        ({"port_sequence": [65536]}, r"port_sequence"),
        ({"port_sequence": list(range(1, MAX_PORT_SEQUENCE + 2))}, "length <= 64"),
        ({"port_sequence": []}, "length >= 1"),
        ({"allocation": "sequential:0"}, "allocation"),
        ({"allocation": "sequential:99999"}, "exceeds"),
        ({"allocation": "zigzag"}, "allocation"),
        ({"external_ip": "not-an-ip"}, "not an IP"),
        ({"call_id": "x" * 65}, "call_id"),
        ({"call_id": "bad id\n"}, "call_id"),
        ({"probe_time_ms": -1}, "probe_time_ms"),
        ({"extra": 1}, "unknown field `extra`"),
        ({"type": "no-such-type"}, "Invalid value 'no-such-type'"),
    ],
)
def test_invalid_fields_are_named(change: dict[str, object], match: str) -> None:
    with pytest.raises(SignalDecodeError, match=match):
        decode(_wire({**PROBE, **change}))


def test_missing_field_and_tag() -> None:
    with pytest.raises(SignalDecodeError, match="missing required field `call_id`"):
        decode(_wire({k: v for k, v in PROBE.items() if k != "call_id"}))
    with pytest.raises(SignalDecodeError, match="type"):
        decode(_wire({k: v for k, v in PROBE.items() if k != "type"}))


def test_birthday_caps() -> None:
    base = {"type": "hard-nat-birthday-start", "call_id": "c", "start_at_ms": 1}
    with pytest.raises(SignalDecodeError, match="acceptor_port_count"):
        decode(_wire({**base, "acceptor_port_count": MAX_ACCEPTOR_PORTS + 1}))
    with pytest.raises(SignalDecodeError, match="length <= 1024"):
        decode(
            _wire({**base, "acceptor_port_count": 1024, "acceptor_ports": [9] * 1025}),
        )
    with pytest.raises(SignalDecodeError, match="acceptor_port_count is 1"):
        decode(_wire({**base, "acceptor_port_count": 1, "acceptor_ports": [9, 10]}))


def test_bad_peer_id_bytes() -> None:
    with pytest.raises(SignalDecodeError, match="peer_id"):
        decode(_wire({"type": "relay-lookup", "peer_id": b"\x00" * 31}))
    with pytest.raises(SignalDecodeError, match="peer_id"):
        decode(_wire({"type": "relay-lookup", "peer_id": "pt1..."}))


def test_nat_report_consistency() -> None:
    base = {"type": "nat-report", "udp": True, "mapping": "unknown", "filtering": "unknown"}
    with pytest.raises(SignalDecodeError, match="nonzero delta"):
        decode(_wire({**base, "allocation": "sequential"}))
    with pytest.raises(SignalDecodeError, match="reversed"):
        decode(_wire({**base, "allocation": "random", "port_range": [2000, 1000]}))


@pytest.mark.parametrize("v", [0, 2, 999, -1, "1", None, 1.0, True])
def test_unknown_version(v: object) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        decode(_wire({"type": "hangup"}, v=v))
    assert info.value.supported == (1,)
    assert isinstance(info.value, SignalDecodeError)


def test_unknown_version_reported_even_if_message_is_unknown() -> None:
    with pytest.raises(UnsupportedVersion):
        decode(_wire({"type": "from-the-future", "x": [1, 2]}, v=2))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x90",
        msgspec.msgpack.encode({"msg": {"type": "hangup"}}),
        msgspec.msgpack.encode({"v": 1}),
        msgspec.msgpack.encode({"v": 1, "msg": {"type": "hangup"}, "extra": 0}),
        msgspec.msgpack.encode([1, {"type": "hangup"}]),
        _wire({"type": "hangup"}) + b"\x00",  # trailing bytes
    ],
)
def test_malformed_envelopes(data: bytes) -> None:
    with pytest.raises(SignalDecodeError):
        decode(data)


def test_oversize_message() -> None:
    with pytest.raises(MessageTooLarge):
        decode(b"\x00" * (MAX_MESSAGE_SIZE + 1))


def test_encode_refuses_invalid_messages() -> None:
    with pytest.raises(SignalEncodeError, match="port"):
        fields = {k: v for k, v in PROBE.items() if k != "type"}
        encode(HardNatProbe(**{**fields, "port_sequence": (0,)}))  # type: ignore[arg-type]
    with pytest.raises(SignalEncodeError, match="reason"):
        encode(Hangup(reason="x" * 257))
    with pytest.raises(SignalEncodeError):
        encode("hello")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an IP"):
        Candidate(kind="host", address="example.org", port=1, priority=1, foundation="a")


def test_messages_are_frozen_and_hashable() -> None:
    msg = Hello(versions=(1,))
    with pytest.raises(AttributeError):
        msg.versions = (2,)  # type: ignore[misc]
    assert hash(msg) == hash(Hello(versions=(1,)))


def test_negotiate_version() -> None:
    assert negotiate_version([1, 2, 3]) == 1
    with pytest.raises(UnsupportedVersion, match="speaks 1"):
        negotiate_version([2, 3])


@pytest.mark.parametrize(
    ("kind", "delta", "text"),
    [
        ("sequential", 1, "sequential:1"),
        ("sequential", -2, "sequential:-2"),
        ("port-preserving", None, "preserving"),
        ("random", None, "random"),
        ("unknown", None, "unknown"),
    ],
)
def test_allocation_strings(kind: str, delta: int | None, text: str) -> None:
    assert format_allocation(kind, delta) == text
    assert parse_allocation(text) == (kind, delta)


def test_allocation_string_errors() -> None:
    for kind, delta in (("sequential", 0), ("sequential", None), ("zigzag", None)):
        with pytest.raises(ValueError):
            format_allocation(kind, delta)
    with pytest.raises(ValueError):
        parse_allocation("sequential:0")


# --- fuzzing --------------------------------------------------------------------------------


def _decode_or_typed_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except SignalDecodeError:
        return
    assert isinstance(msg, Message)
    assert decode(encode(msg)) == msg  # anything accepted is re-encodable


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_typed_error(data)


@settings(max_examples=500)
@given(any_message, st.data())
def test_fuzz_mutated_messages(msg: Message, data: st.DataObject) -> None:
    wire = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, max(0, len(wire) - 1)))
        if op == "flip" and wire:
            wire[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            wire[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and wire:
            del wire[i]
        elif op == "truncate":
            del wire[i:]
    _decode_or_typed_error(bytes(wire))


@settings(max_examples=200)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text()
        | st.binary(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    ),
    st.sampled_from([t.__struct_config__.tag for t in MESSAGE_TYPES]),
)
def test_fuzz_structured_garbage(value: object, tag: object) -> None:
    # Well-formed msgpack of the right general shape, with arbitrary field values.
    fields = value if isinstance(value, dict) else {"x": value}
    _decode_or_typed_error(_wire({"type": tag, **fields}))
    _decode_or_typed_error(msgspec.msgpack.encode({"v": 1, "msg": value}))


def test_deeply_nested_input_is_a_typed_error() -> None:
    deep = b"\x91" * 5000 + b"\xc0"  # 5000 nested one-element arrays
    _decode_or_typed_error(msgspec.msgpack.encode({"v": 1}) + deep)
    _decode_or_typed_error(b"\x82\xa1v\x01\xa3msg" + deep)


def test_huge_declared_lengths_are_rejected_cheaply() -> None:
    # A 10-byte message declaring a 4-billion-element array must not allocate for it.
    _decode_or_typed_error(b"\x82\xa1v\x01\xa3msg\xdd\xff\xff\xff\xff")
    _decode_or_typed_error(b"\x82\xa1v\x01\xa3msg\xdf\xff\xff\xff\xff")
    _decode_or_typed_error(b"\x82\xa1v\x01\xa3msg\xc6\xff\xff\xff\xff")
