"""Endpoint + Connection over real loopback UDP, through an in-process RelayServer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from punchthrough.apps.echo import DEFAULT_FRAME_SIZE, run_echo_session, serve_endpoint
from punchthrough.endpoint import (
    MAX_DATAGRAM_PAYLOAD,
    ConnectionClosed,
    ConnectTimeout,
    Endpoint,
    EndpointClosed,
    EndpointConfig,
    NoRelay,
    PeerIdMismatch,
    PeerRefused,
    PeerUnreachable,
)
from punchthrough.identity import Identity, PeerId
from punchthrough.identity import PeerIdMismatch as IdentityPeerIdMismatch
from punchthrough.netio import Address, UdpNetwork
from punchthrough.relay import PayloadFilter, RelayLimits, RelayServer
from punchthrough.transport.path import Path

NET = UdpNetwork()
LOOP_HOST = "127.0.0.1"
FAST_RELAY = RelayLimits(shutdown_grace=0.05)


@contextlib.asynccontextmanager
async def relay_server(payload_filter: PayloadFilter | None = None) -> AsyncIterator[Address]:
    server = await RelayServer.start(
        NET, [(LOOP_HOST, 0)], limits=FAST_RELAY, payload_filter=payload_filter
    )
    try:
        yield server.addresses[0]
    finally:
        await server.close()


#: These tests are about the relayed call; direct paths on loopback are tested at the end.
RELAY_ONLY = EndpointConfig(direct=False)


def bind(identity: Identity, relays: list[Address], **kw: object) -> object:
    return Endpoint.bind(identity, relays=relays, host=LOOP_HOST, **kw)  # type: ignore[arg-type]


async def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll a condition driven by loopback packets (bounded)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def pair(
    relay: Address, **kw: object
) -> AsyncIterator[tuple[Endpoint, Endpoint, Identity, Identity]]:
    a, b = Identity.generate(), Identity.generate()
    kw.setdefault("config", RELAY_ONLY)
    async with (
        Endpoint.bind(a, relays=[relay], host=LOOP_HOST, config=RELAY_ONLY) as ea,
        Endpoint.bind(b, relays=[relay], host=LOOP_HOST, **kw) as eb,  # type: ignore[arg-type]
    ):
        yield ea, eb, a, b


async def test_connect_accept_datagrams_and_streams_both_ways() -> None:
    async with relay_server() as relay, pair(relay) as (ea, eb, a, b):
        assert ea.relay_addresses == [relay] and ea.peer_id == a.peer_id
        assert ea.local_address[0] == LOOP_HOST
        accept = asyncio.ensure_future(eb.accept())
        conn = await ea.connect(str(b.peer_id), timeout=5)
        peer = await asyncio.wait_for(accept, 5)
        assert conn.peer_id == b.peer_id and peer.peer_id == a.peer_id
        assert conn.path == peer.path == "relay" and conn.path_changes == []
        # datagrams, each way
        conn.send_datagram(b"ping")
        assert await asyncio.wait_for(peer.recv_datagram(), 5) == b"ping"
        peer.send_datagram(b"pong")
        assert await asyncio.wait_for(conn.recv_datagram(), 5) == b"pong"
        # the largest datagram goes through; one byte more is refused with the limit
        big = bytes(range(256)) * (MAX_DATAGRAM_PAYLOAD // 256) + b"x" * (
            MAX_DATAGRAM_PAYLOAD % 256
        )
        conn.send_datagram(big)
        assert await asyncio.wait_for(peer.recv_datagram(), 5) == big
        with pytest.raises(ValueError, match=str(MAX_DATAGRAM_PAYLOAD)):
            conn.send_datagram(big + b"!")
        # streams, dialer-opened and acceptor-opened; two opened back to back stay distinct
        r1, w1 = await conn.open_stream()
        r2, w2 = await conn.open_stream()
        assert w1.stream_id != w2.stream_id
        w1.write(b"one")
        w1.write_eof()
        w2.write(b"two")
        w2.write_eof()
        got = set()
        for _ in range(2):
            pr, pw = await asyncio.wait_for(peer.accept_stream(), 5)
            data = await asyncio.wait_for(pr.read(), 5)
            got.add(data)
            pw.write(data.upper())
            pw.write_eof()
        assert got == {b"one", b"two"}
        assert await asyncio.wait_for(r1.read(), 5) == b"ONE"
        assert await asyncio.wait_for(r2.read(), 5) == b"TWO"
        _r3, w3 = await peer.open_stream()
        w3.write(b"from acceptor")
        w3.write_eof()
        cr, _cw = await asyncio.wait_for(conn.accept_stream(), 5)
        assert await asyncio.wait_for(cr.read(), 5) == b"from acceptor"
        report = conn.traversal_report().to_json()
        assert report["path"] == "relay"
        stages = {s["stage"]: s["status"] for s in report["stages"]}  # type: ignore[attr-defined]
        assert stages["relay"] == "succeeded" and stages["hole-punch"] == "pending"
        assert conn.stats["datagrams_sent"] == 2
        await conn.close()


async def test_echo_session_and_async_iteration() -> None:
    async with relay_server() as relay, pair(relay) as (ea, eb, _, b):
        accepted: list[PeerId] = []
        server = asyncio.ensure_future(
            serve_endpoint(eb, on_accept=lambda c: accepted.append(c.peer_id))
        )
        result = await run_echo_session(ea, b.peer_id, duration=1.0, pps=50)
        assert result["frames_sent"] == 50
        assert result["frames_lost"] == 0 and result["frames_corrupt"] == 0
        assert result["path"] == "relay" and result["path_changes"] == []
        assert isinstance(result["connected_ms"], float) and result["connected_ms"] < 2000
        assert accepted == [ea.peer_id]
        await eb.close()
        await asyncio.wait_for(server, 5)  # iteration over the endpoint ends when it closes


async def test_wrong_peer_id_is_a_peer_id_mismatch() -> None:
    async with relay_server() as relay, pair(relay) as (ea, eb, _, b):
        # eb is registered at the relay as b, but answers QUIC with another identity's
        # certificate: exactly what a relay routing us to the wrong peer would look like.
        eb.identity = Identity.generate()
        with pytest.raises(PeerIdMismatch) as info:
            await ea.connect(b.peer_id, timeout=5)
        assert isinstance(info.value, IdentityPeerIdMismatch)
        assert info.value.expected == b.peer_id and info.value.actual == eb.identity.peer_id
        await wait_until(lambda: not ea.connections)


async def test_allow_callback_refuses_with_a_typed_error() -> None:
    asked: list[PeerId] = []

    async def allow(peer: PeerId) -> bool:
        asked.append(peer)
        return False

    async with relay_server() as relay, pair(relay, allow=allow) as (ea, eb, a, b):
        with pytest.raises(PeerRefused, match="refused"):
            await ea.connect(b.peer_id, timeout=5)
        # asked once, with the relay-stamped id (at the Initial: the refusal rides as 0.5-RTT
        # data); a dialer that then fails to prove that id never reaches accept()
        assert asked == [a.peer_id]
        assert eb.stats["refused_allow"] == 1 and eb.stats.get("accepted", 0) == 0


async def test_allow_callback_admits() -> None:
    async with relay_server() as relay, pair(relay, allow=lambda p: True) as (ea, eb, _, b):
        accept = asyncio.ensure_future(eb.accept())
        conn = await ea.connect(b.peer_id, timeout=5)
        await asyncio.wait_for(accept, 5)
        assert conn.path == "relay"


async def test_close_reason_reaches_the_peer_and_wakes_waiters() -> None:
    async with relay_server() as relay, pair(relay) as (ea, eb, _, b):
        accept = asyncio.ensure_future(eb.accept())
        conn = await ea.connect(b.peer_id, timeout=5)
        peer = await asyncio.wait_for(accept, 5)
        waiter = asyncio.ensure_future(peer.recv_datagram())
        await asyncio.sleep(0)
        await conn.close("bye for now")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(waiter, 5)
        assert info.value.reason == "bye for now" and info.value.by_peer
        await asyncio.wait_for(peer.wait_closed(), 5)
        assert peer.close_reason is not None and peer.close_reason.reason == "bye for now"
        with pytest.raises(ConnectionClosed):
            conn.send_datagram(b"late")
        with pytest.raises(ConnectionClosed):
            await peer.open_stream()


async def test_unregistered_peer_fails_fast() -> None:
    async with relay_server() as relay, pair(relay) as (ea, _eb, _, _b):
        nobody = Identity.generate().peer_id
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(PeerUnreachable, match="not registered"):
            await ea.connect(nobody, timeout=5)
        assert loop.time() - start < 1.0  # the relay's NOTICE, not the timeout


async def test_second_relay_is_tried_when_the_first_does_not_know_the_peer() -> None:
    async with relay_server() as r1, relay_server() as r2:
        a, b = Identity.generate(), Identity.generate()
        async with (
            Endpoint.bind(a, relays=[r1, r2], host=LOOP_HOST, config=RELAY_ONLY) as ea,
            Endpoint.bind(b, relays=[r2], host=LOOP_HOST, config=RELAY_ONLY) as eb,
        ):
            accept = asyncio.ensure_future(eb.accept())
            conn = await ea.connect(b.peer_id, timeout=5)
            await asyncio.wait_for(accept, 5)
            assert conn.paths.current == Path.relay(r2)
            (change,) = conn.path_changes
            assert change["from"] == change["to"] == "relay"


async def test_no_relay_and_dead_relay() -> None:
    ident = Identity.generate()
    async with Endpoint.bind(ident, host=LOOP_HOST) as ep:
        with pytest.raises(NoRelay):
            await ep.connect(Identity.generate().peer_id)
    # a relay address where nothing answers: bind fails with NoRelay, reasons included
    sock = await NET.bind(LOOP_HOST)
    dead = sock.local_address
    try:
        with pytest.raises(NoRelay, match="did not register"):
            await Endpoint.bind(
                ident, relays=[dead], host=LOOP_HOST, config=EndpointConfig(relay_timeout=0.3)
            )
    finally:
        sock.close()


async def test_connect_timeout_when_peer_does_not_answer() -> None:
    async with relay_server() as relay, pair(relay) as (ea, eb, _, b):
        eb.mux.set_relay_handler(None)
        eb.mux.remove_relay_source(relay)  # eb stays registered but hears nothing
        with pytest.raises(ConnectTimeout):
            await ea.connect(b.peer_id, timeout=0.5)
        assert not ea.connections


async def test_simultaneous_dials_make_two_working_connections() -> None:
    async with relay_server() as relay, pair(relay) as (ea, eb, a, b):
        c_ab, c_ba = await asyncio.gather(ea.connect(b.peer_id), eb.connect(a.peer_id))
        in_b, in_a = await asyncio.gather(eb.accept(), ea.accept())
        for out, inc in ((c_ab, in_b), (c_ba, in_a)):
            out.send_datagram(b"hello")
            assert await asyncio.wait_for(inc.recv_datagram(), 5) == b"hello"


async def test_unknown_non_initial_packets_are_dropped_and_counted() -> None:
    async with relay_server() as relay, pair(relay) as (ea, eb, _, b):
        client = ea.relays[relay]
        client.send(b.peer_id, bytes([0x40]) + b"\x01" * 40)  # short header, unknown CID
        client.send(b.peer_id, bytes([0xC0]) + b"\x00" * 100)  # long header, not an Initial
        await wait_until(lambda: eb.stats.get("dropped_relay_unknown", 0) == 2)
        assert not eb.connections


async def test_accept_wakes_with_endpoint_closed() -> None:
    async with relay_server() as relay:
        ep = await Endpoint.bind(Identity.generate(), relays=[relay], host=LOOP_HOST)
        waiter = asyncio.ensure_future(ep.accept())
        await asyncio.sleep(0)
        await ep.close()
        with pytest.raises(EndpointClosed):
            await asyncio.wait_for(waiter, 5)
        await ep.close()  # idempotent
        assert ep.sock.closed


def _flip(pred: Callable[[bytes], bool]) -> PayloadFilter:
    def flt(payload: bytes) -> bytes:
        if not pred(payload):
            return payload
        mid = len(payload) // 2
        return payload[:mid] + bytes([payload[mid] ^ 0x20]) + payload[mid + 1 :]

    return flt


async def test_tampering_relay_cannot_alter_anything() -> None:
    """Every forwarded packet altered: no handshake, nothing delivered, a clean timeout."""
    async with relay_server(_flip(lambda p: True)) as relay, pair(relay) as (ea, eb, _, b):
        with pytest.raises(ConnectTimeout):
            await ea.connect(b.peer_id, timeout=1.0)
        assert eb.stats.get("accepted", 0) == 0


async def test_tampered_packets_are_dropped_not_delivered() -> None:
    """Every 4th 1-RTT packet big enough to carry a call frame altered: those are dropped by
    QUIC; no altered frame arrives. (Counting only frame-sized packets: which small packets,
    ACKs and PINGs, fall between the frames depends on timing, and with every 4th of *all*
    short packets a busy machine could flip only packets that carry no frame.)"""
    counter = {"n": 0}

    def every_fourth_short(p: bytes) -> bool:
        if p[0] & 0x80 or len(p) < DEFAULT_FRAME_SIZE:  # handshake, or too small for a frame
            return False
        counter["n"] += 1
        return counter["n"] % 4 == 0

    async with (
        relay_server(_flip(every_fourth_short)) as relay,
        pair(relay) as (ea, eb, _, b),
    ):
        server = asyncio.ensure_future(serve_endpoint(eb))
        try:
            result = await run_echo_session(ea, b.peer_id, duration=1.0, pps=50)
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
        assert counter["n"] >= 40  # frame-bearing packets both ways
        assert result["frames_corrupt"] == 0
        # datagrams are not retransmitted: frames in altered packets are lost, not altered
        assert 0 < result["frames_lost"] < result["frames_sent"]  # type: ignore[operator]


async def test_bind_returns_awaitable_and_context_manager() -> None:
    async with relay_server() as relay:
        binding = bind(Identity.generate(), [relay])
        ep = await binding  # type: ignore[misc]
        try:
            assert ep.relay_addresses == [relay]
        finally:
            await ep.close()


async def test_busy_backlog_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    async with relay_server() as relay:
        a, b = Identity.generate(), Identity.generate()
        cfg = EndpointConfig(accept_backlog=1)
        async with (
            Endpoint.bind(a, relays=[relay], host=LOOP_HOST) as ea,
            Endpoint.bind(b, relays=[relay], host=LOOP_HOST, config=cfg) as eb,
        ):
            await ea.connect(b.peer_id)  # fills the backlog (nobody calls accept)
            with pytest.raises(PeerRefused, match="busy"):
                await ea.connect(b.peer_id)
            assert eb.stats["refused_busy"] == 1


async def test_same_identity_twice_last_registration_wins_without_a_fight() -> None:
    async with relay_server() as relay:
        ident, caller = Identity.generate(), Identity.generate()
        async with (
            Endpoint.bind(ident, relays=[relay], host=LOOP_HOST) as first,
            Endpoint.bind(ident, relays=[relay], host=LOOP_HOST) as second,
            Endpoint.bind(caller, relays=[relay], host=LOOP_HOST) as ec,
        ):
            await wait_until(lambda: first.stats.get("relay_replaced", 0) == 1)
            assert first.relay_addresses == [] and second.relay_addresses == [relay]
            accept = asyncio.ensure_future(second.accept())
            await ec.connect(ident.peer_id, timeout=5)
            await asyncio.wait_for(accept, 5)
            assert second.stats.get("relay_lost", 0) == 0


async def test_loopback_call_goes_direct_without_losing_a_frame() -> None:
    """Two endpoints on one machine: the host candidates answer, the call leaves the relay."""
    async with relay_server() as relay:
        a, b = Identity.generate(), Identity.generate()
        async with (
            Endpoint.bind(a, relays=[relay], host=LOOP_HOST) as ea,
            Endpoint.bind(b, relays=[relay], host=LOOP_HOST) as eb,
        ):
            server = asyncio.ensure_future(serve_endpoint(eb))
            try:
                result = await run_echo_session(ea, b.peer_id, duration=1.0, pps=50)
            finally:
                server.cancel()
                await asyncio.gather(server, return_exceptions=True)
            assert result["frames_lost"] == 0 and result["frames_corrupt"] == 0
            assert result["path"] == "direct" and result["strategy"] == "hole-punch"
            assert [c["to"] for c in result["path_changes"]] == ["direct"]  # type: ignore[attr-defined]
            assert result["direct_ms"] is not None
            assert result["connected_ms"] <= result["direct_ms"]  # type: ignore[operator]
            report = result["traversal"]
            stages = {s["stage"]: s["status"] for s in report["stages"]}  # type: ignore[index]
            assert stages["hole-punch"] == "succeeded" and stages["relay"] == "succeeded"
