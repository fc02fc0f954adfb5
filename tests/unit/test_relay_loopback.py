"""RelayServer + RelayClient over real loopback UDP sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from ssl import CERT_NONE

import pytest

from punchthrough.identity import RELAY_REGISTER_CONTEXT, Identity, PeerId, channel_binding
from punchthrough.netio import Address, DatagramSocket, UdpNetwork
from punchthrough.relay import (
    NOTICE_UNKNOWN_DESTINATION,
    RelayClient,
    RelayCloseCode,
    RelayError,
    RelayLimits,
    RelayRegistrationError,
    RelayServer,
    RelayTimeout,
    encode_send,
)
from punchthrough.relay import control_client as client_mod
from punchthrough.signal import RELAY_UNAUTHORIZED
from punchthrough.stun import ChangeRequest, StunClient
from punchthrough.transport import DatagramMux

NET = UdpNetwork()
FAST = RelayLimits(shutdown_grace=0.05)


@dataclass
class Peer:
    sock: DatagramSocket
    mux: DatagramMux
    identity: Identity
    client: RelayClient | None = None
    inbox: asyncio.Queue[tuple[PeerId, bytes]] = field(default_factory=asyncio.Queue)
    notices: list[tuple[int, PeerId]] = field(default_factory=list)

    @property
    def id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def rc(self) -> RelayClient:
        assert self.client is not None
        return self.client


class Harness:
    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.relay: Address = server.addresses[0]
        self.peers: list[Peer] = []

    async def peer(self, *, register: bool = True, identity: Identity | None = None) -> Peer:
        sock = await NET.bind("127.0.0.1")
        p = Peer(sock, DatagramMux(sock), identity or Identity.generate())
        self.peers.append(p)
        if register:
            p.client = await RelayClient.connect(p.mux, self.relay, p.identity, timeout=5)
            p.client.set_receiver(lambda src, data: p.inbox.put_nowait((src, data)))
            p.client.set_notice_handler(lambda code, pid: p.notices.append((code, pid)))
        return p

    async def close(self) -> None:
        for p in self.peers:
            if p.client is not None:
                await p.client.close()
            p.mux.close()
            p.sock.close()
        await self.server.close()


@contextlib.asynccontextmanager
async def relay(limits: RelayLimits = FAST, **kw: object) -> AsyncIterator[Harness]:
    server = await RelayServer.start(NET, [("127.0.0.1", 0)], limits=limits, **kw)  # type: ignore[arg-type]
    h = Harness(server)
    try:
        yield h
    finally:
        await h.close()


async def recv(p: Peer, timeout: float = 2.0) -> tuple[PeerId, bytes]:
    async with asyncio.timeout(timeout):
        return await p.inbox.get()


async def until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_two_clients_register_and_exchange_both_ways() -> None:
    async with relay() as h:
        a, b = await h.peer(), await h.peer()
        assert a.rc.observed_address == a.sock.local_address
        assert a.rc.relay_peer_id == h.server.peer_id
        assert {p.peer_id for p in h.server.peers()} == {a.id, b.id}
        a.rc.send(b.id, b"hello b")
        assert await recv(b) == (a.id, b"hello b")
        b.rc.send(a.id, b"hello a")
        assert await recv(a) == (b.id, b"hello a")
        for i in range(50):
            a.rc.send(b.id, bytes([i]) * 1400)
        got = [await recv(b) for _ in range(50)]
        assert [d[0] for _, d in got] == list(range(50))
        st = h.server.stats
        assert st["frames_out"] == 52 and st["clients"] == 2
        assert a.rc.stats["frames_sent"] == 51 and b.rc.stats["frames_received"] == 51


async def test_registration_of_another_peers_id_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client signing with its own key while claiming a victim's peer id gets 401."""
    async with relay() as h:
        victim = await h.peer()
        attacker = await h.peer(register=False)
        from punchthrough.identity import sign_exporter as real_sign

        # the attacker holds only its own key: identity claims victim's id, signature is its own
        monkeypatch.setattr(
            client_mod,
            "sign_exporter",
            lambda ident, value, context: real_sign(attacker.identity, value, context=context),
        )

        class Impostor(Identity):
            @property
            def peer_id(self) -> PeerId:
                return victim.id

        impostor = Impostor(attacker.identity.private_key)
        with pytest.raises(RelayRegistrationError) as info:
            await RelayClient.connect(attacker.mux, h.relay, impostor, timeout=5)
        assert info.value.code == RELAY_UNAUTHORIZED
        assert h.server.stats["registrations_refused"] == 1
        # the victim is untouched and still reachable
        assert [p.peer_id for p in h.server.peers()] == [victim.id]
        assert not victim.rc.closed
        # the failed client released its mux registrations
        assert not attacker.mux._relay_sources
        await until(lambda: not attacker.mux._quic)


async def test_wrong_signature_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signature over another value (e.g. replayed from another connection) is refused."""
    async with relay() as h:
        p = await h.peer(register=False)
        monkeypatch.setattr(
            client_mod, "channel_binding", lambda conn: bytes(32)
        )  # not this connection's binding
        with pytest.raises(RelayRegistrationError) as info:
            await RelayClient.connect(p.mux, h.relay, p.identity, timeout=5)
        assert info.value.code == RELAY_UNAUTHORIZED
        assert h.server.stats["clients"] == 0
        assert channel_binding is not None and RELAY_REGISTER_CONTEXT


async def test_unregistered_source_dropped_and_unknown_destination_noticed() -> None:
    async with relay() as h:
        a, b = await h.peer(), await h.peer()
        stranger = await h.peer(register=False)
        stranger.sock.sendto(encode_send(b.id, bytes(8), b"spoof"), h.relay)
        await until(lambda: h.server.stats["dropped_unregistered"] == 1)
        nobody = Identity.generate().peer_id
        a.rc.send(nobody, b"anyone?")
        await until(lambda: bool(a.notices))
        assert a.notices == [(NOTICE_UNKNOWN_DESTINATION, nobody)]
        assert h.server.stats["dropped_unknown_dest"] == 1
        assert b.inbox.empty()
        a.rc.send(b.id, b"still fine")
        assert await recv(b) == (a.id, b"still fine")


async def test_frames_forged_with_a_clients_address_cost_it_nothing() -> None:
    """Issue 12, finding 3: SEND frames from a registered client's own address but without its
    frame token (what an off-path attacker forging that address can send) are dropped before
    the client's rate limit and never reach the peer; the client's real frames still flow."""
    limits = RelayLimits(shutdown_grace=0.05, packets_per_second=50.0, packet_burst=50.0)
    async with relay(limits) as h:
        a, b = await h.peer(), await h.peer()
        forged = 200  # four times the client's whole budget
        for i in range(forged):  # the victim's source address, a guessed token
            a.sock.sendto(encode_send(b.id, i.to_bytes(8, "big"), b"forged"), h.relay)
            if i % 10 == 9:
                await asyncio.sleep(0)  # let the relay read: a kernel-buffer drop tests nothing
        await until(lambda: h.server.stats["dropped_bad_token"] == forged)
        a_stats = next(p for p in h.server.peers() if p.peer_id == a.id).stats
        assert a_stats.get("frames_in", 0) == 0 and a_stats.get("dropped_rate", 0) == 0
        assert b.inbox.empty() and h.server.stats["frames_out"] == 0
        for n in range(40):  # within its real budget: every frame arrives
            a.rc.send(b.id, b"real" + n.to_bytes(2, "big"))
        got = [await recv(b) for _ in range(40)]
        assert got == [(a.id, b"real" + n.to_bytes(2, "big")) for n in range(40)]


async def test_notices_are_rate_limited() -> None:
    limits = RelayLimits(shutdown_grace=0.05, notices_per_second=1.0, notice_burst=3.0)
    async with relay(limits) as h:
        a = await h.peer()
        nobody = Identity.generate().peer_id
        for _ in range(100):
            a.rc.send(nobody, b"x")
        await until(lambda: h.server.stats["dropped_unknown_dest"] == 100)
        await asyncio.sleep(0.05)
        assert 3 <= len(a.notices) <= 4
        assert h.server.stats["notices_sent"] == len(a.notices)


async def test_reregistration_from_new_address_replaces_old() -> None:
    async with relay() as h:
        ident = Identity.generate()
        old = await h.peer(identity=ident)
        other = await h.peer()
        new = await h.peer(identity=ident)  # same peer id, new socket = NAT rebinding
        async with asyncio.timeout(2):
            await old.rc.wait_closed()
        assert old.rc.close_reason == "registration replaced"
        peers = h.server.peers()
        assert len(peers) == 2
        assert (
            next(p for p in peers if p.peer_id == ident.peer_id).address == new.sock.local_address
        )
        other.rc.send(ident.peer_id, b"to the new one")
        assert await recv(new) == (other.id, b"to the new one")
        assert old.inbox.empty()
        assert h.server.stats["registrations_replaced"] == 1


async def test_connect_times_out_without_relay() -> None:
    sock = await NET.bind("127.0.0.1")
    silent = await NET.bind("127.0.0.1")  # nobody answers there
    mux = DatagramMux(sock)
    try:
        with pytest.raises(RelayTimeout):
            await RelayClient.connect(mux, silent.local_address, Identity.generate(), timeout=0.3)
        assert not mux._relay_sources and not mux._quic
    finally:
        mux.close()
        sock.close()
        silent.close()


async def test_client_refuses_relay_with_wrong_pinned_identity() -> None:
    async with relay() as h:
        p = await h.peer(register=False)
        with pytest.raises(RelayError):
            await RelayClient.connect(
                p.mux, h.relay, p.identity, relay_peer_id=Identity.generate().peer_id
            )
        assert not p.mux._relay_sources


async def test_payload_filter_hook_alters_forwarded_payloads() -> None:
    def flip(payload: bytes) -> bytes | None:
        if payload == b"drop me":
            return None
        return bytes([payload[0] ^ 0xFF]) + payload[1:]

    async with relay(payload_filter=flip) as h:
        a, b = await h.peer(), await h.peer()
        a.rc.send(b.id, b"drop me")
        a.rc.send(b.id, b"\x00abc")
        assert await recv(b) == (a.id, b"\xffabc")
        assert h.server.stats["dropped_filter"] == 1


# The idle-timeout test lives in tests/sim/test_relay_sim.py: it needs virtual time, not 2 s of
# real sleeping.


async def test_relay_close_ends_client_registration_and_releases_everything() -> None:
    server = await RelayServer.start(NET, [("127.0.0.1", 0)], limits=FAST)
    h = Harness(server)
    try:
        a = await h.peer()
        tasks_before = asyncio.all_tasks()
        await server.close()
        assert server.closed and server.stats["connections"] == 0
        async with asyncio.timeout(3):
            await a.rc.wait_closed()
        assert a.rc.close_reason == "relay shutting down"
        assert all(s.closed for s in server._sockets.values())
        assert asyncio.all_tasks() <= tasks_before
        a.rc.send(a.id, b"x")
        assert a.rc.stats["dropped_closed"] == 1
    finally:
        await h.close()


async def test_close_code_says_why_the_relay_closed_and_none_when_we_did() -> None:
    """Supervisors decide on ``close_code``, never on the reason text."""
    server = await RelayServer.start(NET, [("127.0.0.1", 0)], limits=FAST)
    h = Harness(server)
    try:
        ident = Identity.generate()
        old = await h.peer(identity=ident)
        mine = await h.peer()
        await h.peer(identity=ident)
        async with asyncio.timeout(2):
            await old.rc.wait_closed()
        assert old.rc.close_code == RelayCloseCode.REPLACED
        await mine.rc.close()
        assert mine.rc.close_code is None
        survivor = await h.peer()
        await server.close()
        async with asyncio.timeout(3):
            await survivor.rc.wait_closed()
        assert survivor.rc.close_code == RelayCloseCode.SHUTDOWN
    finally:
        await h.close()


async def test_stun_rfc5780_on_relay_port() -> None:
    server = await RelayServer.start(NET, [("127.0.0.1", 0)], alt_ip="127.0.0.2", limits=FAST)
    sock = await NET.bind("127.0.0.1")
    mux = DatagramMux(sock)
    stun = StunClient(sock, rto=0.2, max_retransmits=3)
    mux.add_stun_handler(stun.handle_datagram)
    try:
        relay_addr = server.addresses[0]
        assert len(server.stun_addresses) == 4
        res = await stun.binding(relay_addr)
        assert res.mapped == sock.local_address
        assert res.other_address == ("127.0.0.2", relay_addr[1] + 1)
        res2 = await stun.binding(relay_addr, change_ip=True, change_port=True)
        assert res2.source == ("127.0.0.2", relay_addr[1] + 1)
        # and the same socket registers with the relay on the same port
        client = await RelayClient.connect(mux, relay_addr, Identity.generate())
        assert client.observed_address == sock.local_address
        await client.close()
        assert server.stats["stun"] == 2
    finally:
        stun.close()
        mux.close()
        sock.close()
        await server.close()
    assert ChangeRequest is not None


# -- robustness --------------------------------------------------------------------------------


async def test_garbage_truncated_unknown_and_flood_while_others_keep_talking() -> None:
    """One registered client floods (20000 frames) and sends garbage, a stranger sends junk of
    every kind; two other clients keep a ping-pong going (with retransmission, as QUIC would)."""
    import random

    rng = random.Random(7)
    limits = RelayLimits(shutdown_grace=0.05, packets_per_second=500, packet_burst=200)
    async with relay(limits) as h:
        a, b, flooder = await h.peer(), await h.peer(), await h.peer()
        stranger = await h.peer(register=False)
        rounds = 100
        replies: dict[int, asyncio.Future[None]] = {}

        def b_receive(src: PeerId, data: bytes) -> None:
            if src == a.id:
                b.rc.send(a.id, b"pong" + data[4:])

        def a_receive(src: PeerId, data: bytes) -> None:
            n = int.from_bytes(data[4:8])
            fut = replies.get(n)
            if src == b.id and fut is not None and not fut.done():
                fut.set_result(None)

        b.rc.set_receiver(b_receive)
        a.rc.set_receiver(a_receive)

        async def ping_pong() -> None:
            loop = asyncio.get_running_loop()
            for n in range(rounds):
                replies[n] = loop.create_future()
                for _ in range(50):  # bounded retransmission
                    a.rc.send(b.id, b"ping" + n.to_bytes(4))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await asyncio.shield(replies[n])
                        break
                else:
                    raise AssertionError(f"round {n} never completed")

        async def abuse() -> None:
            relay_addr = h.relay
            fsock, ssock = flooder.sock, stranger.sock
            unknown = Identity.generate().peer_id
            token = flooder.rc.frame_token
            for i in range(20000):
                fsock.sendto(encode_send(b.id, token, b"flood"), relay_addr)
                if i % 10 == 0:
                    kind = i // 10 % 6
                    if kind == 0:  # truncated relay frames
                        fsock.sendto(
                            bytes([0x10]) + rng.randbytes(rng.randrange(0, 33)), relay_addr
                        )
                    elif kind == 1:  # reserved / unknown relay frame types
                        fsock.sendto(
                            bytes([rng.choice((0x11, 0x12, 0x13))]) + rng.randbytes(40), relay_addr
                        )
                    elif kind == 2:  # unknown destinations
                        fsock.sendto(encode_send(unknown, token, b"?"), relay_addr)
                    elif kind == 3:  # oversize
                        fsock.sendto(bytes([0x10]) + rng.randbytes(1500), relay_addr)
                    elif kind == 4:  # stranger: relay frames, STUN junk, QUIC junk, other bytes
                        first = rng.choice((0x00, 0x01, 0x10, 0x13, 0x40, 0x7F, 0xC0, 0xFF, 0x20))
                        ssock.sendto(
                            bytes([first]) + rng.randbytes(rng.randrange(0, 1300)), relay_addr
                        )
                    else:  # a QUIC v1 "Initial" header with a garbage body
                        junk = (
                            bytes([0xC3, 0, 0, 0, 1, 8])
                            + rng.randbytes(8)
                            + b"\x00"
                            + rng.randbytes(1250)
                        )
                        ssock.sendto(junk, relay_addr)
                await asyncio.sleep(0)  # let the relay read: a kernel-buffer flood tests nothing

        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(60):
            await asyncio.gather(ping_pong(), abuse())
        elapsed = loop.time() - started
        await asyncio.sleep(0.1)
        st = h.server.stats
        fstats = next(p for p in h.server.peers() if p.peer_id == flooder.id).stats
        # the limiter let through at most its burst plus its rate over the test's duration
        forwarded = fstats["frames_in"] - fstats["dropped_rate"] - fstats["dropped_unknown_dest"]
        assert forwarded <= 200 + 500 * (elapsed + 0.2) + 1
        assert st["dropped_rate"] >= 5000
        assert st["malformed"] >= 600
        assert st["dropped_unregistered"] >= 30
        assert st["connections_refused"] >= 150  # garbage "Initials" (some lost in the kernel)
        assert st["dropped_unknown_dest"] >= 1
        assert st["handler_errors"] == 0
        assert st["connections"] == 3  # garbage Initials left no connection state behind
        flooder_stats = next(p for p in h.server.peers() if p.peer_id == flooder.id).stats
        assert flooder_stats["dropped_rate"] == st["dropped_rate"]
        # and the relay still registers newcomers who can talk
        late = await h.peer()
        late.rc.send(a.id, b"late")
        a.rc.set_receiver(lambda src, data: a.inbox.put_nowait((src, data)))
        assert await recv(a) == (late.id, b"late")


async def test_bad_control_stream_gets_error_and_close() -> None:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import HandshakeCompleted, QuicEvent

    from punchthrough.relay import RELAY_ALPN
    from punchthrough.signal import RELAY_BAD_REQUEST, read_message
    from punchthrough.signal import RelayError as RelayErrorMsg
    from punchthrough.transport.quic import QuicDriver

    async with relay() as h:
        p = await h.peer(register=False)
        done = asyncio.get_running_loop().create_future()

        def on_event(ev: QuicEvent) -> None:
            if isinstance(ev, HandshakeCompleted) and not done.done():
                done.set_result(None)

        cfg = QuicConfiguration(is_client=True, alpn_protocols=[RELAY_ALPN], verify_mode=CERT_NONE)
        drv = QuicDriver.client(cfg, p.sock.sendto, h.relay, on_event=on_event, mux=p.mux)
        try:
            async with asyncio.timeout(3):
                await done
                reader, writer = drv.open_stream()
                writer.write(b"\x00\x00\x00\x05garbage!")
                reply = await read_message(reader)
                assert isinstance(reply, RelayErrorMsg) and reply.code == RELAY_BAD_REQUEST
                await drv.wait_closed()
            await until(lambda: h.server.stats["connections"] == 0)  # after its closing period
        finally:
            drv.abort()


async def test_connection_that_never_registers_is_closed() -> None:
    from aioquic.quic.configuration import QuicConfiguration

    from punchthrough.relay import RELAY_ALPN
    from punchthrough.transport.quic import QuicDriver

    async with relay(RelayLimits(register_timeout=0.3, shutdown_grace=0.05)) as h:
        p = await h.peer(register=False)
        cfg = QuicConfiguration(is_client=True, alpn_protocols=[RELAY_ALPN], verify_mode=CERT_NONE)
        drv = QuicDriver.client(cfg, p.sock.sendto, h.relay, mux=p.mux)
        try:
            async with asyncio.timeout(3):
                await drv.wait_closed()
            assert drv.terminated is not None
            assert drv.terminated.reason_phrase == "no registration"
            await until(lambda: h.server.stats["connections"] == 0)
        finally:
            drv.abort()


async def test_wrong_alpn_is_refused_without_state() -> None:
    from aioquic.quic.configuration import QuicConfiguration

    from punchthrough.transport.quic import QuicDriver

    async with relay() as h:
        p = await h.peer(register=False)
        cfg = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=CERT_NONE)
        drv = QuicDriver.client(cfg, p.sock.sendto, h.relay, mux=p.mux)
        try:
            async with asyncio.timeout(3):
                await drv.wait_closed()
            assert drv.terminated is not None and "ALPN" in drv.terminated.reason_phrase
            await until(lambda: h.server.stats["connections"] == 0)
            assert h.server.stats["clients"] == 0
        finally:
            drv.abort()


async def test_lookup_says_where_a_peer_is_registered() -> None:
    async with relay() as h:
        a, b = await h.peer(), await h.peer()
        assert await a.rc.lookup(b.id) == (h.relay,)
        assert await a.rc.lookup(Identity.generate().peer_id) == ()


async def test_connections_per_ip_are_capped() -> None:
    async with relay(RelayLimits(max_connections_per_ip=2, shutdown_grace=0.05)) as h:
        await h.peer()
        await h.peer()
        third = await h.peer(register=False)
        with pytest.raises(RelayTimeout):
            await RelayClient.connect(third.mux, h.relay, third.identity, timeout=0.5)
        assert h.server.stats["connections"] == 2
        assert h.server.stats["connections_refused"] >= 1
