"""Server core decisions (sans-IO) and the asyncio client/server over loopback UDP."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from punchthrough.netio import Address, DatagramSocket, UdpNetwork
from punchthrough.stun import (
    Attribute,
    ChangeRequest,
    ErrorCode,
    Fingerprint,
    MappedAddress,
    Message,
    MessageClass,
    Method,
    OtherAddress,
    Padding,
    RawAttribute,
    ResponseOrigin,
    ResponsePort,
    Software,
    StunClient,
    StunDecodeError,
    StunError,
    StunErrorResponse,
    StunServer,
    StunServerCore,
    StunTimeout,
    UnknownAttributes,
    XorMappedAddress,
    decode_message,
    encode,
)

P, A = "192.0.2.1", "192.0.2.2"
SRC = ("198.51.100.9", 40000)


def _req(*attrs: Attribute, method: int = Method.BINDING, fingerprint: bool = False) -> bytes:
    return encode(
        Message(method, MessageClass.REQUEST, attributes=list(attrs)), fingerprint=fingerprint
    )


def _one(actions: list[tuple[bytes, Address, Address]]) -> tuple[Message, Address, Address, int]:
    assert len(actions) == 1
    payload, from_addr, dest = actions[0]
    return decode_message(payload), from_addr, dest, len(payload)


# --- sans-IO core ------------------------------------------------------------------------------


def test_plain_binding_response_is_small() -> None:
    core = StunServerCore([(P, 3478)])
    request = _req()
    msg, from_addr, dest, size = _one(core.handle(request, SRC, (P, 3478)))
    assert msg.message_class is MessageClass.SUCCESS_RESPONSE
    assert msg.get(XorMappedAddress) == XorMappedAddress(SRC)
    assert msg.transaction_id == decode_message(request).transaction_id
    assert from_addr == (P, 3478) and dest == SRC
    assert size == 32  # header + XOR-MAPPED-ADDRESS only
    assert msg.get(OtherAddress) is None and msg.get(ResponseOrigin) is None
    assert core.stats["requests"] == 1 and core.stats["responses"] == 1


def test_fingerprint_echoed_when_requested() -> None:
    core = StunServerCore([(P, 3478)])
    msg, *_ = _one(core.handle(_req(fingerprint=True), SRC, (P, 3478)))
    assert msg.get(Fingerprint) is not None


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    core = StunServerCore([(P, 3478)])
    request = _req(RawAttribute(0x0024, b"\x00\x00\x00\x01"), RawAttribute(0x8099, b"opt!"))
    msg, from_addr, dest, _ = _one(core.handle(request, SRC, (P, 3478)))
    assert msg.message_class is MessageClass.ERROR_RESPONSE
    assert msg.get(ErrorCode) == ErrorCode(420, "Unknown Attribute")
    assert msg.get(UnknownAttributes) == UnknownAttributes((0x0024,))  # optional one not listed
    assert (from_addr, dest) == ((P, 3478), SRC)
    assert core.stats["errors_sent"] == 1


def test_unknown_optional_attribute_is_ignored() -> None:
    core = StunServerCore([(P, 3478)])
    msg, *_ = _one(core.handle(_req(RawAttribute(0x8099, b"opt!")), SRC, (P, 3478)))
    assert msg.message_class is MessageClass.SUCCESS_RESPONSE


def test_change_request_without_alternate_gets_420() -> None:
    core = StunServerCore([(P, 3478)])
    for flags in [(False, False), (True, False), (False, True), (True, True)]:
        msg, *_ = _one(core.handle(_req(ChangeRequest(*flags)), SRC, (P, 3478)))
        assert msg.get(ErrorCode) == ErrorCode(420, "Unknown Attribute")
        assert msg.get(UnknownAttributes) == UnknownAttributes((0x0003,))


@pytest.mark.parametrize(
    ("local", "change_ip", "change_port", "origin"),
    [
        ((P, 3478), False, False, (P, 3478)),
        ((P, 3478), True, False, (A, 3478)),
        ((P, 3478), False, True, (P, 3479)),
        ((P, 3478), True, True, (A, 3479)),
        ((A, 3479), True, True, (P, 3478)),
        ((A, 3478), False, True, (A, 3479)),
    ],
)
def test_rfc5780_change_request_table(
    local: Address, change_ip: bool, change_port: bool, origin: Address
) -> None:
    """RFC 5780 §6.1 table 1: source IP/port from the flags; OTHER-ADDRESS is Ca:Cp."""
    core = StunServerCore([(P, 3478)], A)
    assert sorted(core.addresses) == sorted([(P, 3478), (P, 3479), (A, 3478), (A, 3479)])
    request = _req(ChangeRequest(change_ip, change_port), Software("make room for everything"))
    msg, from_addr, dest, _ = _one(core.handle(request, SRC, local))
    assert from_addr == origin and dest == SRC
    assert msg.get(ResponseOrigin) == ResponseOrigin(origin)
    other = (A if local[0] == P else P, 3479 if local[1] == 3478 else 3478)
    assert msg.get(OtherAddress) == OtherAddress(other)
    assert msg.get(MappedAddress) == MappedAddress(SRC)
    assert msg.get(XorMappedAddress) == XorMappedAddress(SRC)


def test_rfc5780_needs_a_single_concrete_primary_ip() -> None:
    with pytest.raises(ValueError):
        StunServerCore([(P, 3478), ("192.0.2.3", 3478)], A)
    with pytest.raises(ValueError):
        StunServerCore([("0.0.0.0", 3478)], A)
    with pytest.raises(ValueError):
        StunServerCore([(P, 3478)], "2001:db8::1")
    with pytest.raises(ValueError):
        StunServerCore([(P, 3478), (P, 3479)], A)  # 3479 is 3478's alternate


def test_amplification_budget_trims_optional_attributes() -> None:
    """Response <= 3x request: a bare 20-byte request to an RFC 5780 server gets the attributes
    that matter (XOR-MAPPED, OTHER-ADDRESS, RESPONSE-ORIGIN), not MAPPED-ADDRESS/SOFTWARE."""
    core = StunServerCore([(P, 3478)], A, software="a rather long software description")
    request = _req()
    assert len(request) == 20
    msg, _, _, size = _one(core.handle(request, SRC, (P, 3478)))
    assert size <= 60
    assert msg.get(XorMappedAddress) and msg.get(OtherAddress) and msg.get(ResponseOrigin)
    assert msg.get(MappedAddress) is None and msg.get(Software) is None
    assert core.stats["trimmed"] == 1
    # A bigger request leaves room for everything.
    big = _req(Software("x" * 40))
    msg, _, _, size = _one(core.handle(big, SRC, (P, 3478)))
    assert size <= 3 * len(big)
    assert msg.get(MappedAddress) and msg.get(Software)
    assert core.stats["trimmed"] == 1


def test_amplification_refusal_when_mandatory_part_does_not_fit() -> None:
    core = StunServerCore([("2001:db8::1", 3478)], amplification_factor=1.0)
    src6 = ("2001:db8::99", 5000)
    # 20-byte request; the IPv6 XOR-MAPPED-ADDRESS alone makes a 44-byte response.
    assert core.handle(_req(), src6, ("2001:db8::1", 3478)) == []
    assert core.stats["refused"] == 1 and core.stats["dropped"] == 1
    payload, *_ = core.handle(_req(Software("x" * 24)), src6, ("2001:db8::1", 3478))[0]
    assert decode_message(payload).get(XorMappedAddress) == XorMappedAddress(src6)


def test_response_port_and_padding() -> None:
    core = StunServerCore([(P, 3478)])
    msg, _, dest, _ = _one(core.handle(_req(ResponsePort(5555)), SRC, (P, 3478)))
    assert dest == (SRC[0], 5555) and msg.message_class is MessageClass.SUCCESS_RESPONSE
    msg, _, dest, _ = _one(core.handle(_req(ResponsePort(5555), Padding(8)), SRC, (P, 3478)))
    assert msg.get(ErrorCode) == ErrorCode(400, "Bad Request") and dest == SRC
    msg, _, _, _ = _one(core.handle(_req(ResponsePort(0)), SRC, (P, 3478)))
    assert msg.get(ErrorCode) == ErrorCode(400, "Bad Request")
    msg, _, _, size = _one(core.handle(_req(Padding(400)), SRC, (P, 3478)))
    assert msg.get(Padding) == Padding(400)
    assert size <= 20 + 4 + 400 + 12 + 8


def test_other_methods_and_classes() -> None:
    core = StunServerCore([(P, 3478)])
    msg, *_ = _one(core.handle(_req(method=0x003), SRC, (P, 3478)))  # Allocate: not served
    assert msg.get(ErrorCode) == ErrorCode(400, "Bad Request")
    for klass in (MessageClass.INDICATION, MessageClass.SUCCESS_RESPONSE):
        assert core.handle(encode(Message(Method.BINDING, klass)), SRC, (P, 3478)) == []
    assert core.stats["dropped"] == 2


def test_garbage_is_dropped_and_counted() -> None:
    core = StunServerCore([(P, 3478)])
    good = _req()
    bad = [b"", b"\x00", good[:-1], good + b"\x00", b"\xff" * 40, good[:4] + b"xxxx" + good[8:]]
    for data in bad:
        assert core.handle(data, SRC, (P, 3478)) == []
    assert core.stats["malformed"] == len(bad) == core.stats["dropped"]
    assert core.stats["requests"] == 0


# --- asyncio over loopback ---------------------------------------------------------------------

LO = "127.0.0.1"
LO_ALT = "127.0.0.2"  # Linux routes all of 127/8 to lo


@pytest.fixture
async def net() -> AsyncIterator[UdpNetwork]:
    yield UdpNetwork()


@pytest.fixture
async def sock(net: UdpNetwork) -> AsyncIterator[DatagramSocket]:
    s = await net.bind(LO, 0)
    try:
        yield s
    finally:
        s.close()


async def _server(net: UdpNetwork, alt_ip: str | None = None) -> StunServer:
    return await StunServer.start(net, listen=[(LO, 0)], alt_ip=alt_ip)


async def _wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_binding_over_loopback(net: UdpNetwork, sock: DatagramSocket) -> None:
    server = await _server(net)
    client = StunClient(sock)
    client.attach()
    try:
        res = await client.binding(server.addresses[0], timeout=2.0)
        assert res.mapped == sock.local_address
        assert res.source == server.addresses[0]
        assert res.other_address is None and res.response_origin is None
        assert res.rtt >= 0 and res.local == sock.local_address
        assert server.stats["responses"] == 1
    finally:
        client.close()
        server.close()


async def test_rfc5780_over_loopback(net: UdpNetwork, sock: DatagramSocket) -> None:
    server = await _server(net, alt_ip=LO_ALT)
    client = StunClient(sock)
    client.attach()
    try:
        primary = server.addresses[0]
        port, alt_port = primary[1], primary[1] + 1
        assert sorted(server.addresses) == sorted(
            [(LO, port), (LO, alt_port), (LO_ALT, port), (LO_ALT, alt_port)]
        )
        res = await client.binding(primary, timeout=2.0)
        assert res.other_address == (LO_ALT, alt_port)
        assert res.response_origin == primary and res.source == primary
        cases = {(True, False): (LO_ALT, port), (False, True): (LO, alt_port)}
        cases[(True, True)] = (LO_ALT, alt_port)
        for (change_ip, change_port), origin in cases.items():
            res = await client.binding(primary, change_ip, change_port, timeout=2.0)
            assert res.source == origin and res.response_origin == origin
            assert res.mapped == sock.local_address
    finally:
        client.close()
        server.close()


async def test_change_request_to_plain_server_raises_420(
    net: UdpNetwork, sock: DatagramSocket
) -> None:
    server = await _server(net)
    client = StunClient(sock)
    client.attach()
    try:
        with pytest.raises(StunErrorResponse) as info:
            await client.binding(server.addresses[0], change_ip=True, timeout=2.0)
        assert info.value.code == 420 and info.value.unknown_attributes == (0x0003,)
    finally:
        client.close()
        server.close()


async def test_garbage_burst_then_server_still_answers(
    net: UdpNetwork, sock: DatagramSocket
) -> None:
    server = await _server(net)
    client = StunClient(sock)
    client.attach()
    try:
        target = server.addresses[0]
        valid = _req()
        garbage = [b"", b"\x01", valid[:10], valid[:-4], b"\x00" * 20, b"\xff" * 1200]
        garbage += [bytes([i]) * (i % 60) for i in range(200)]
        for data in garbage:
            sock.sendto(data, target)
        # Sent after the burst on the same path: answered, and the only thing answered.
        res = await client.binding(target, timeout=2.0)
        assert res.mapped == sock.local_address
        await _wait_for(lambda: server.stats["dropped"] >= 200)
        assert server.stats["responses"] == 1
    finally:
        client.close()
        server.close()


async def test_client_on_shared_socket(net: UdpNetwork, sock: DatagramSocket) -> None:
    """The client does not own the socket: a demultiplexer feeds it and gets False for
    datagrams that are not ours."""
    server = await _server(net)
    client = StunClient(sock)
    other: list[bytes] = []

    def demux(data: bytes, addr: Address) -> None:
        if not client.handle_datagram(data, addr):
            other.append(data)

    sock.set_receiver(demux)
    peer = await net.bind(LO, 0)
    try:
        peer.sendto(b"\x40quic-ish", sock.local_address)
        stray = encode(Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE))
        peer.sendto(stray, sock.local_address)
        res = await client.binding(server.addresses[0], timeout=2.0)
        assert res.mapped == sock.local_address
        await _wait_for(lambda: len(other) == 2)
        assert other[0] == b"\x40quic-ish"
        assert client.stats["unknown_transaction"] == 1
        assert not client.handle_datagram(b"\x00\x01garbage", peer.local_address)
        assert client.stats["malformed"] == 1
    finally:
        peer.close()
        client.close()
        server.close()


async def test_timeout_after_all_retransmissions(net: UdpNetwork, sock: DatagramSocket) -> None:
    silent = await net.bind(LO, 0)  # receives but never answers
    seen: list[bytes] = []
    silent.set_receiver(lambda data, addr: seen.append(data))
    client = StunClient(sock, rto=0.005, max_retransmits=3, rm=4)
    client.attach()
    try:
        with pytest.raises(StunTimeout) as info:
            await client.binding(silent.local_address)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, StunError)
        await _wait_for(lambda: len(seen) == 4)
        assert len({decode_message(d).transaction_id for d in seen}) == 1  # same request resent
        assert client.stats["sent"] == 4 and client.stats["pending"] == 0
    finally:
        silent.close()
        client.close()


async def test_caller_timeout_ends_early(net: UdpNetwork, sock: DatagramSocket) -> None:
    silent = await net.bind(LO, 0)
    client = StunClient(sock)  # default schedule would take 39.5 s
    client.attach()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(StunTimeout):
            await client.binding(silent.local_address, timeout=0.05)
        assert loop.time() - start < 5.0
    finally:
        silent.close()
        client.close()


async def test_close_fails_pending_transactions(net: UdpNetwork, sock: DatagramSocket) -> None:
    silent = await net.bind(LO, 0)
    client = StunClient(sock)
    client.attach()
    try:
        task = asyncio.create_task(client.binding(silent.local_address))
        await _wait_for(lambda: client.stats["pending"] == 1)
        client.close()
        with pytest.raises(StunError, match="closed"):
            await task
        with pytest.raises(StunError, match="closed"):
            await client.binding(silent.local_address)
    finally:
        silent.close()


async def test_probe_hairpin(net: UdpNetwork, sock: DatagramSocket) -> None:
    client = StunClient(sock, rto=0.01)
    client.attach()
    silent = await net.bind(LO, 0)
    try:
        # Without NAT our "mapped" address is our own socket: the request comes straight back.
        assert await client.probe_hairpin(sock.local_address, timeout=2.0)
        # A mapped address that leads elsewhere never brings the request back.
        assert not await client.probe_hairpin(silent.local_address, timeout=0.1)
    finally:
        silent.close()
        client.close()


async def test_server_start_rejects_bad_rfc5780_config(net: UdpNetwork) -> None:
    with pytest.raises(ValueError):
        await StunServer.start(net, listen=[(LO, 0), (LO_ALT, 0)], alt_ip="127.0.0.3")
    with pytest.raises(ValueError):
        await StunServer.start(net, listen=[(LO, 0), (LO, 0)], alt_ip=LO_ALT, alt_port=40000)


def test_decode_error_is_the_only_error_on_bad_response() -> None:
    with pytest.raises(StunDecodeError):
        decode_message(b"\x01\x01\x00\x00")


# --- the client adapter on a virtual-time loop: proves all timing comes from the loop ----------


class _InstantSelector(selectors.SelectSelector):
    """Never waits: a select with a timeout just advances the loop's virtual clock."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            self.clock += timeout
        return []


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _InstantSelector()
        super().__init__(selector=self._virtual)

    def time(self) -> float:
        return self._virtual.clock


class _FakeSocket:
    """In-memory DatagramSocket recording (virtual send time, data, destination)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.sent: list[tuple[float, bytes, Address]] = []
        self.receiver: Callable[[bytes, Address], None] | None = None
        self.closed = False
        self.send_errors = 0
        self.local_address: Address = ("10.0.0.2", 5000)

    def sendto(self, data: bytes, addr: Address) -> None:
        self.sent.append((self._loop.time(), data, addr))

    def set_receiver(self, receiver: Callable[[bytes, Address], None] | None) -> None:
        self.receiver = receiver

    def close(self) -> None:
        self.closed = True


def _run_virtual(
    coro_factory: Callable[[_VirtualTimeLoop, _FakeSocket], Coroutine[Any, Any, None]],
) -> None:
    loop = _VirtualTimeLoop()
    try:
        fake = _FakeSocket(loop)
        loop.run_until_complete(coro_factory(loop, fake))
    finally:
        loop.close()


def test_client_default_schedule_in_virtual_time() -> None:
    async def scenario(loop: _VirtualTimeLoop, fake: _FakeSocket) -> None:
        client = StunClient(fake)
        client.attach()
        start = loop.time()
        with pytest.raises(StunTimeout):
            await client.binding(("192.0.2.1", 3478))
        assert loop.time() - start == pytest.approx(39.5)
        times = [t - start for t, _, _ in fake.sent]
        assert times == pytest.approx([0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        client.close()

    _run_virtual(scenario)


def test_client_response_in_virtual_time() -> None:
    async def scenario(loop: _VirtualTimeLoop, fake: _FakeSocket) -> None:
        client = StunClient(fake)
        client.attach()
        server_core = StunServerCore([("192.0.2.1", 3478)])

        def answer() -> None:  # the server answers the latest request 2 s after the first send
            _, data, dest = fake.sent[-1]
            for payload, origin, _ in server_core.handle(data, fake.local_address, dest):
                assert fake.receiver is not None
                fake.receiver(payload, origin)

        loop.call_later(2.0, answer)
        res = await client.binding(("192.0.2.1", 3478))
        assert res.rtt == pytest.approx(2.0)
        assert res.retransmissions == 2  # sends at 0, 0.5, 1.5
        assert res.mapped == fake.local_address and res.source == ("192.0.2.1", 3478)
        client.close()

    _run_virtual(scenario)
