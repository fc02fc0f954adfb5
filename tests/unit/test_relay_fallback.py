"""Relay transports at the endpoint (endpoint.relaylink), on loopback with a real relay:
UDP to the relay goes through a gate (a UDP forwarder standing in for a firewall), the relay's
TLS/WebSocket port is reachable. Real TLS, real WebSocket, real time (a few seconds)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from punchthrough.endpoint import Endpoint, EndpointConfig
from punchthrough.endpoint.relayrace import (
    MIN_FALLBACK_WAIT,
    Cancel,
    GiveUp,
    Keep,
    Start,
    Transport,
    TransportRace,
    fallback_wait,
)
from punchthrough.endpoint.relayspec import parse_relay_entry
from punchthrough.identity import Identity
from punchthrough.netio import Address, DatagramSocket, UdpNetwork
from punchthrough.relay import RelayLimits, RelayServer
from punchthrough.relay.stream import StreamListener, server_context

NET = UdpNetwork()
T, W, U = Transport.TLS, Transport.WEBSOCKET, Transport.UDP


# -- the decisions (sans-IO) ----------------------------------------------------------------------
def test_udp_first_streams_after_the_wait_first_registered_wins() -> None:
    race = TransportRace(udp=True, streams=(T, W), wait=0.25)
    assert race.start(0.0) == [Start((U,))]
    assert race.next_deadline() == 0.25
    assert race.poll(0.2) == []
    assert race.poll(0.25) == [Start((T, W))]
    out = race.registered(W, 0.4)
    assert out[0] == Keep(W, out[0].reason) and "UDP unanswered after 250 ms" in out[0].reason
    assert out[1] == Cancel((T, U))
    assert race.done and race.winner is W
    assert race.registered(T, 0.5) == [Cancel((T,))]  # a late second winner is dropped


def test_udp_that_fails_early_starts_the_streams_at_once() -> None:
    race = TransportRace(udp=True, streams=(T,), wait=0.25)
    race.start(0.0)
    assert race.failed(U, "ICMP port unreachable", 0.01) == [Start((T,))]
    keep = race.registered(T, 0.1)[0]
    assert isinstance(keep, Keep) and "UDP failed (ICMP port unreachable)" in keep.reason


def test_udp_wins_before_the_wait_and_streams_never_start() -> None:
    race = TransportRace(udp=True, streams=(T, W), wait=0.25)
    race.start(0.0)
    assert race.registered(U, 0.1) == [Keep(U, "UDP registered")]
    assert race.next_deadline() is None and race.poll(1.0) == []


def test_everything_fails_gives_up_with_every_reason() -> None:
    race = TransportRace(udp=True, streams=(T,), wait=0.25)
    race.start(0.0)
    race.poll(0.3)
    assert race.failed(U, "timeout", 0.4) == []
    out = race.failed(T, "refused", 0.5)
    assert len(out) == 1 and isinstance(out[0], GiveUp)
    assert "udp: timeout" in out[0].reason and "tls: refused" in out[0].reason


def test_streams_that_fail_leave_udp_running_and_udp_can_still_win() -> None:
    race = TransportRace(udp=True, streams=(T, W), wait=0.25)
    race.start(0.0)
    assert race.poll(0.25) == [Start((T, W))]
    assert race.failed(T, "connection refused", 0.26) == []
    assert race.failed(W, "connection refused", 0.27) == []  # UDP is still running
    assert not race.done
    keep = race.registered(U, 0.6)
    assert keep == [Keep(U, "UDP registered")] and race.winner is U


def test_stream_only_relay_starts_on_streams() -> None:
    race = TransportRace(udp=False, streams=(T, W), wait=0.25)
    assert race.start(0.0) == [Start((T, W))]


def test_fallback_wait_is_two_rtts_at_least_250_ms() -> None:
    assert fallback_wait(None) == MIN_FALLBACK_WAIT
    assert fallback_wait(0.01) == MIN_FALLBACK_WAIT
    assert fallback_wait(0.3) == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("spec", "udp", "kinds"),
    [
        ("198.51.100.20:3478", ("198.51.100.20", 3478), ()),
        ("relay.example:3478,tls://relay.example:443", ("relay.example", 3478), ("tls",)),
        ("tls://relay.example,wss://relay.example/relay", None, ("tls", "websocket")),
        ("[2001:db8::1]:3478,wss://[2001:db8::1]/r", ("2001:db8::1", 3478), ("websocket",)),
    ],
)
def test_relay_entries(spec: str, udp: tuple[str, int] | None, kinds: tuple[str, ...]) -> None:
    entry = parse_relay_entry(spec)
    assert entry.udp == udp
    assert tuple(t.kind for t in entry.streams) == kinds
    assert parse_relay_entry(entry.text) == entry


def test_relay_entry_pin_and_errors() -> None:
    pin = Identity.generate().peer_id
    assert parse_relay_entry(f"tls://r:443,id={pin}").pin == pin
    for bad in ("", "1.2.3.4:1,5.6.7.8:2", "tls://r,id=nope", "x:0", "http://r"):
        with pytest.raises(ValueError):
            parse_relay_entry(bad)


# -- on loopback ---------------------------------------------------------------------------------
class UdpGate:
    """A UDP forwarder in front of the relay: open forwards both ways, closed drops (a
    firewall that blocks UDP)."""

    def __init__(self, front: DatagramSocket, target: Address) -> None:
        self.front = front
        self.target = target
        self.open = True
        self._backs: dict[Address, DatagramSocket] = {}
        front.set_receiver(self._from_client)

    @classmethod
    async def start(cls, target: Address) -> UdpGate:
        return cls(await NET.bind("127.0.0.1"), target)

    @property
    def address(self) -> Address:
        return self.front.local_address

    def _from_client(self, data: bytes, addr: Address) -> None:
        if not self.open:
            return
        back = self._backs.get(addr)
        if back is None:
            return asyncio.get_running_loop().create_task(self._new_back(data, addr)) and None
        back.sendto(data, self.target)

    async def _new_back(self, data: bytes, client: Address) -> None:
        back = await NET.bind("127.0.0.1")
        self._backs[client] = back

        def from_relay(d: bytes, _a: Address) -> None:
            if self.open:
                self.front.sendto(d, client)

        back.set_receiver(from_relay)
        back.sendto(data, self.target)

    def close(self) -> None:
        self.front.close()
        for b in self._backs.values():
            b.close()


@dataclass
class World:
    relay: RelayServer
    listener: StreamListener
    gate: UdpGate
    identity: Identity

    def entry(self, *kinds: str) -> str:
        port = self.listener.address[1]
        parts = [f"{self.gate.address[0]}:{self.gate.address[1]}"]
        if "tls" in kinds:
            parts.append(f"tls://127.0.0.1:{port}")
        if "websocket" in kinds:
            parts.append(f"wss://127.0.0.1:{port}/relay")
        parts.append(f"id={self.identity.peer_id}")
        return ",".join(parts)


@contextlib.asynccontextmanager
async def world() -> AsyncIterator[World]:
    ident = Identity.generate()
    relay = await RelayServer.start(
        NET, [("127.0.0.1", 0)], ident, limits=RelayLimits(shutdown_grace=0.05)
    )
    listener = await StreamListener.start(relay, "127.0.0.1", 0, server_context(ident))
    gate = await UdpGate.start(relay.addresses[0])
    try:
        yield World(relay, listener, gate, ident)
    finally:
        gate.close()
        await relay.close()


CONFIG = EndpointConfig(direct=False, relay_timeout=3.0)


def transport_now(ep: Endpoint) -> str:
    (transport,) = ep.relay_transports.values()
    return transport


async def bind(*relays: str | Address) -> Endpoint:
    return await Endpoint.bind(Identity.generate(), relays=list(relays), config=CONFIG)


async def wait_transport(ep: Endpoint, want: str, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with asyncio.timeout(timeout):
        while list(ep.relay_transports.values()) != [want]:
            await asyncio.sleep(0.02)
    return loop.time() - t0


async def echo(ep: Endpoint) -> None:
    conn = await ep.accept()
    async for data in conn.datagrams():
        with contextlib.suppress(Exception):
            conn.send_datagram(data)


async def test_udp_blocked_at_bind_registers_over_a_stream_and_calls_a_udp_peer() -> None:
    async with world() as w:
        w.gate.open = False
        b = await Endpoint.bind(Identity.generate(), relays=[w.relay.addresses[0]], config=CONFIG)
        a = await Endpoint.bind(
            Identity.generate(), relays=[w.entry("tls", "websocket")], config=CONFIG
        )
        try:
            assert list(b.relay_transports.values()) == ["udp"]
            assert transport_now(a) in ("tls", "websocket")
            (change,) = a.relay_transport_changes
            assert "UDP unanswered after 250 ms" in change.reason
            # nothing answered UDP: the NAT summary says so (the planner then skips every
            # direct stage: "UDP is blocked on the local side"), and no TCP address is offered
            # as a UDP candidate
            assert a.local_candidates.summary.udp is False
            assert b.local_candidates.summary.udp is True
            tcp_seen = a.relays[next(iter(a.relays))].observed_address
            assert all(c.address != tcp_seen[0] for c in a.local_candidates.candidates)
            server = asyncio.get_running_loop().create_task(echo(b))
            conn = await a.connect(b.peer_id, timeout=5)
            for i in range(20):
                conn.send_datagram(b"frame %d" % i)
            async with asyncio.timeout(5):
                got = {await conn.recv_datagram() for _ in range(20)}
            assert got == {b"frame %d" % i for i in range(20)}
            assert conn.path == "relay"
            server.cancel()
        finally:
            await a.close()
            await b.close()


class Call:
    """A 50 pps echo call: frame numbers sent and echoed back, for loss around a move."""

    def __init__(self, conn: object) -> None:
        self.conn = conn
        self.sent: list[tuple[float, int]] = []
        self.back: dict[int, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._send()), loop.create_task(self._recv())]

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            self.conn.send_datagram(n.to_bytes(4, "big") + b"x" * 156)  # type: ignore[attr-defined]
            self.sent.append((loop.time(), n))
            n += 1
            await asyncio.sleep(0.02)

    async def _recv(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await self.conn.recv_datagram()  # type: ignore[attr-defined]
            self.back.setdefault(int.from_bytes(data[:4], "big"), loop.time())

    async def stop(self, settle: float = 0.5) -> None:
        self._tasks[0].cancel()
        await asyncio.sleep(settle)
        self._tasks[1].cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def lost(self, since: float = 0.0) -> int:
        return sum(1 for t, n in self.sent if t >= since and n not in self.back)


async def test_udp_blocked_mid_call_moves_to_a_stream_and_back_on_the_same_connection() -> None:
    async with world() as w:
        b = await Endpoint.bind(Identity.generate(), relays=[w.relay.addresses[0]], config=CONFIG)
        a = await Endpoint.bind(
            Identity.generate(), relays=[w.entry("tls", "websocket")], config=CONFIG
        )
        server = asyncio.get_running_loop().create_task(echo(b))
        try:
            assert list(a.relay_transports.values()) == ["udp"]
            conn = await a.connect(b.peer_id, timeout=5)
            call = Call(conn)
            call.start()
            await asyncio.sleep(1.0)
            w.gate.open = False  # the firewall starts dropping UDP
            async with asyncio.timeout(5):
                while transport_now(a) == "udp":
                    await asyncio.sleep(0.02)
            loop = asyncio.get_running_loop()
            moved = loop.time()
            await asyncio.sleep(1.5)
            assert not conn.closed
            after_move = call.lost(since=moved + 0.3)
            assert after_move == 0, "frames sent after the move must come back"
            change = a.relay_transport_changes[-1]
            assert change.reason.startswith("UDP to the relay stopped answering")
            # the firewall opens again: back to UDP, still the same connection
            w.gate.open = True
            await wait_transport(a, "udp", 6.0)
            back = loop.time()
            await asyncio.sleep(1.0)
            await call.stop()
            assert call.lost(since=back + 0.3) == 0
            assert a.relay_transport_changes[-1].reason == "UDP answers again"
            assert any("answers over UDP again" in why for _, why in a.network_events)
            assert not conn.closed and a.connections == [conn]
            assert w.relay.stats["clients"] == 2
        finally:
            server.cancel()
            await a.close()
            await b.close()


async def test_host_names_for_relays_and_stun_servers() -> None:
    async with world() as w:
        udp_port = w.relay.addresses[0][1]
        tcp_port = w.listener.address[1]
        a = await bind(f"localhost:{udp_port}")
        b = await Endpoint.bind(
            Identity.generate(),
            relays=[f"tls://localhost:{tcp_port},id={w.identity.peer_id}"],
            stun=[f"localhost:{udp_port}"],
            config=CONFIG,
        )
        try:
            assert a.relay_addresses == [("127.0.0.1", udp_port)]
            assert transport_now(a) == "udp"
            # a stream-only relay is known by its resolved address, and runs on TLS at once
            assert b.relay_addresses == [("127.0.0.1", tcp_port)]
            assert transport_now(b) == "tls"
            assert "lists no UDP address" in b.relay_transport_changes[0].reason
            assert b.stun_servers == [("127.0.0.1", udp_port)]
            # a relay that lists no UDP proves nothing about UDP: not "blocked"
            c = await bind(f"tls://localhost:{tcp_port},id={w.identity.peer_id}")
            try:
                assert c.local_candidates.summary.udp is True
            finally:
                await c.close()
        finally:
            await a.close()
            await b.close()
    with pytest.raises(ValueError, match="STUN"):
        Endpoint.bind(Identity.generate(), stun=["tls://localhost:443"])
