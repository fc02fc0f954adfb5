"""SEND frames that overtake their sender's registration (relay.early, issue 17): held only with
the connection's secret token, bounded, replayed in order once registered, dropped otherwise;
and the frame token both ends derive from the control connection's channel binding."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from punchthrough.identity import Identity, PeerId
from punchthrough.netio import Address, UdpNetwork
from punchthrough.relay import RelayClient, RelayLimits, RelayRegistrationError, RelayServer
from punchthrough.relay.early import MAX_EARLY_FRAMES, EarlyFrames
from punchthrough.relay.frames import FRAME_TOKEN_BYTES, derive_frame_token, encode_send
from punchthrough.transport import DatagramMux

PEER = Identity.from_private_bytes(bytes(range(32))).peer_id
CLIENT: Address = ("203.0.113.1", 40000)
TOKEN = derive_frame_token(b"b" * 32)


class _Sink:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Address]] = []

    def __call__(self, data: bytes, addr: Address) -> None:
        self.got.append((data, addr))


def test_the_token_is_a_keyed_function_of_the_binding() -> None:
    assert len(TOKEN) == FRAME_TOKEN_BYTES
    assert derive_frame_token(b"b" * 32) == TOKEN  # both ends get the same
    assert derive_frame_token(b"c" * 32) != TOKEN  # another connection, another token


def test_held_with_the_token_and_replayed_in_order_when_registered() -> None:
    stats: Counter[str] = Counter()
    early, sink, owner = EarlyFrames(stats), _Sink(), object()
    early.expect(CLIENT, TOKEN, owner)
    frames = [encode_send(PEER, TOKEN, bytes([i]) * 50) for i in range(2)]
    assert all(early.hold(f, CLIENT, sink) for f in frames)
    assert sink.got == []
    early.release(CLIENT, object())  # another connection's registration: not these frames
    assert sink.got == []
    early.release(CLIENT, owner)
    assert sink.got == [(f, CLIENT) for f in frames]
    assert stats == Counter(early_frames_held=2)
    assert len(early) == 0
    assert not early.hold(frames[0], CLIENT, sink)  # registered now: not ours any more


def test_nothing_is_held_without_a_handshake_or_with_a_wrong_token() -> None:
    stats: Counter[str] = Counter()
    early, sink = EarlyFrames(stats), _Sink()
    frame = encode_send(PEER, TOKEN, b"x" * 50)
    assert not early.hold(frame, CLIENT, sink)  # no completed handshake from there
    early.expect(CLIENT, TOKEN, object())
    forged = encode_send(PEER, bytes(FRAME_TOKEN_BYTES), b"x" * 50)
    assert not early.hold(forged, CLIENT, sink)  # from the address, not from the client
    assert not early.hold(frame, ("203.0.113.2", 40000), sink)  # another address
    assert not early.hold(frame[:41], CLIENT, sink)  # header only
    assert not early.hold(b"\x10" + frame[1:], CLIENT, sink)  # a DATA frame
    assert stats == Counter()


def test_bounded_and_dropped_when_the_connection_never_registers() -> None:
    stats: Counter[str] = Counter()
    early, sink, owner = EarlyFrames(stats), _Sink(), object()
    early.expect(CLIENT, TOKEN, owner)
    frame = encode_send(PEER, TOKEN, b"x" * 50)
    for _ in range(MAX_EARLY_FRAMES + 3):
        assert early.hold(frame, CLIENT, sink)
    assert stats["early_frames_held"] == MAX_EARLY_FRAMES
    assert stats["early_frames_dropped"] == 3
    early.forget(CLIENT, object())  # not the owner: nothing happens
    assert len(early) == 1
    early.forget(CLIENT, owner)
    assert stats["early_frames_dropped"] == 3 + MAX_EARLY_FRAMES
    assert len(early) == 0 and sink.got == []


def test_a_new_handshake_from_the_same_address_replaces_the_old() -> None:
    stats: Counter[str] = Counter()
    early, sink, old, new = EarlyFrames(stats), _Sink(), object(), object()
    early.expect(CLIENT, TOKEN, old)
    assert early.hold(encode_send(PEER, TOKEN, b"x"), CLIENT, sink)
    other = derive_frame_token(b"d" * 32)
    early.expect(CLIENT, other, new)
    assert stats["early_frames_dropped"] == 1
    assert not early.hold(encode_send(PEER, TOKEN, b"x"), CLIENT, sink)
    assert early.hold(encode_send(PEER, other, b"y"), CLIENT, sink)
    early.release(CLIENT, new)
    assert [d[-1:] for d, _ in sink.got] == [b"y"]


# -- end to end, real loopback UDP (the relay's fast path on: batched receive) ----------------
NET = UdpNetwork()


@contextlib.asynccontextmanager
async def _relay(limits: RelayLimits) -> AsyncIterator[tuple[RelayServer, list[DatagramMux]]]:
    server = await RelayServer.start(NET, [("127.0.0.1", 0)], limits=limits)
    muxes: list[DatagramMux] = []
    try:
        yield server, muxes
    finally:
        for mux in muxes:
            mux.close()
            mux.sock.close()
        await server.close()


async def _mux(muxes: list[DatagramMux]) -> DatagramMux:
    mux = DatagramMux(await NET.bind("127.0.0.1"))
    muxes.append(mux)
    return mux


async def test_a_frame_sent_right_behind_relay_register_is_forwarded() -> None:
    async with _relay(RelayLimits(shutdown_grace=0.05)) as (server, muxes):
        relay = server.addresses[0]
        ida, idb = Identity.generate(), Identity.generate()
        a = await RelayClient.connect(await _mux(muxes), relay, ida, timeout=5)
        inbox: asyncio.Queue[tuple[PeerId, bytes]] = asyncio.Queue()
        a.set_receiver(lambda src, data: inbox.put_nowait((src, data)))
        b = await RelayClient.connect(await _mux(muxes), relay, idb, timeout=5, pipelined=True)
        try:
            b.send(ida.peer_id, b"first, before RelayRegistered")
            async with asyncio.timeout(2.0):
                assert await inbox.get() == (idb.peer_id, b"first, before RelayRegistered")
                await b.wait_registered()
            assert b.observed_address == b._sock.local_address
            stats = server.stats
            assert stats["dropped_unregistered"] == 0 and stats["early_frames_dropped"] == 0
            assert stats["frames_out"] == 1
        finally:
            await a.close()
            await b.close()


async def test_a_pipelined_registration_refused_says_why_and_closes() -> None:
    async with _relay(RelayLimits(shutdown_grace=0.05, max_clients=1)) as (server, muxes):
        relay = server.addresses[0]
        a = await RelayClient.connect(await _mux(muxes), relay, Identity.generate(), timeout=5)
        b = await RelayClient.connect(
            await _mux(muxes), relay, Identity.generate(), timeout=5, pipelined=True
        )
        try:
            with pytest.raises(RelayRegistrationError, match="relay is full"):
                async with asyncio.timeout(2.0):
                    await b.wait_registered()
            assert b.closed
        finally:
            await a.close()
            await b.close()
