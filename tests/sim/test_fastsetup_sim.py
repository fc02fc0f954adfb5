"""Call setup in the fewest round trips (issue 17), in the simulator on virtual time.

The acceptor answers (admission, then its candidates) as 0.5-RTT data; the dialer sends its
proof (``PeerAuth``) with its handshake completion and may send at once. So the call is usable
for the dialer after one relayed round trip, half a round trip before the acceptor checked the
proof: whatever the dialer sends in that half round trip is held, and is the application's only
once the proof verified. These tests pin the timing and, above all, that a dialer that cannot
prove the id the relay stamped, a relay that replays a proof or tampers with the first flights,
never gets anything delivered.

Topology: the relay and both peers' NATs on 10 ms one-way WAN links (relayed RTT 80 ms, direct
RTT 40 ms), as in ``test_endpoint_sim``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import punchthrough.endpoint.peerauth as peerauth
from punchthrough.apps.echo import run_echo_session, serve_endpoint
from punchthrough.endpoint import Connection, ConnectionClosed, Endpoint, EndpointConfig
from punchthrough.identity import Identity
from punchthrough.netio import Address
from punchthrough.relay import PayloadFilter, RelayServer
from punchthrough.sim import Host, Link, World, profile, run

T = TypeVar("T")
RELAY: Address = ("198.51.100.20", 3478)
WAN_LINK = Link(0.010)
LAN_LINK = Link(0.0)
RELAYED_RTT = 0.080
DIRECT_RTT = 0.040
#: The issue's slack on top of the round trips ("<= 1 relayed RTT + 10 ms").
SLACK = 0.010


def _place(world: World, name: str, nat: str, n: int) -> Host:
    cfg = profile(nat)
    assert cfg is not None
    box = world.add_nat(
        f"nat-{name}", cfg, f"203.0.113.{n}", inside_ip=f"10.0.{n}.1", link=WAN_LINK
    )
    return box.add_host(name, f"10.0.{n}.2", link=LAN_LINK)


async def _world(
    body: Callable[[World, Endpoint, Endpoint], Awaitable[T]],
    *,
    config: EndpointConfig | None = None,
    payload_filter: PayloadFilter | None = None,
) -> T:
    world = World()
    relay_host = world.add_host("relay", RELAY[0], link=WAN_LINK)
    relay = await RelayServer.start(relay_host, [RELAY], payload_filter=payload_filter)
    try:
        a_host, b_host = _place(world, "a", "eim-apdf", 1), _place(world, "b", "eim-apdf", 2)
        ida, idb = (
            Identity.from_private_bytes(b"\x01" * 32),
            Identity.from_private_bytes(b"\x02" * 32),
        )
        async with (
            Endpoint.bind(ida, relays=[RELAY], network=a_host, config=config) as ea,
            Endpoint.bind(idb, relays=[RELAY], network=b_host, config=config) as eb,
        ):
            return await body(world, ea, eb)
    finally:
        await relay.close()


async def _send_early(conn: Connection) -> None:
    """What an eager application does the moment ``connect()`` returns."""
    conn.send_datagram(b"first frame")
    _, writer = await conn.open_stream()
    writer.write(b"first stream")


async def _refused_quietly(ea: Endpoint, eb: Endpoint, config_wait: float = 2.0) -> dict[str, Any]:
    """Dial, send at once, and report what the acceptor's application got (nothing, we hope)."""
    accept = asyncio.ensure_future(eb.accept())
    out: dict[str, Any] = {"accepted": False, "dialer_error": None}
    try:
        conn = await ea.connect(eb.peer_id, timeout=2.0)
    except Exception as exc:  # the dialer may learn of the refusal before connect() returns
        out["dialer_error"] = type(exc).__name__
    else:
        with contextlib.suppress(ConnectionClosed):
            await _send_early(conn)
        await asyncio.sleep(config_wait)
        out["dialer_closed"] = conn.close_reason is not None
        out["close_reason"] = conn.close_reason.reason if conn.close_reason else None
    await asyncio.sleep(0.5)
    out["accepted"] = accept.done()
    accept.cancel()
    await asyncio.gather(accept, return_exceptions=True)
    out["stats"] = dict(eb.stats)
    return out


def test_usable_after_one_relayed_round_trip_and_early_data_is_held_until_proven() -> None:
    async def body(world: World, ea: Endpoint, eb: Endpoint) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        accept = asyncio.ensure_future(eb.accept())
        start = loop.time()
        conn = await ea.connect(eb.peer_id)
        usable = loop.time() - start
        await _send_early(conn)  # in the flight that carries the proof
        peer = await accept
        accepted = loop.time() - start
        datagram = await peer.recv_datagram()
        reader, _ = await peer.accept_stream()
        data = await reader.readexactly(len(b"first stream"))
        return {
            "usable": usable,
            "accepted": accepted,
            "datagram": datagram,
            "stream": data,
            "held": peer.stats.get("datagrams_held_before_auth", 0),
        }

    out = run(_world(body, config=EndpointConfig(direct=False)), seed=1)
    assert RELAYED_RTT <= out["usable"] <= RELAYED_RTT + SLACK
    # The acceptor verified the proof half a round trip later, and only then delivered.
    assert out["accepted"] == pytest.approx(1.5 * RELAYED_RTT, abs=SLACK)
    assert out["datagram"] == b"first frame" and out["stream"] == b"first stream"
    assert out["held"] == 1  # it did arrive before the proof was checked


def test_cone_pair_goes_direct_sooner() -> None:
    async def body(world: World, ea: Endpoint, eb: Endpoint) -> dict[str, Any]:
        server = asyncio.ensure_future(serve_endpoint(eb))
        try:
            return await run_echo_session(ea, eb.peer_id, duration=2.0, pps=50)
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)

    out = run(_world(body), seed=1)
    assert out["path"] == "direct" and out["frames_lost"] == 0
    assert out["connected_ms"] == pytest.approx(RELAYED_RTT * 1000, abs=1)
    # Before issue 17: 260 ms. Candidates ride the first flights; the checks start when the
    # acceptor has the dialer's (1.5 relayed RTT) plus the start margin.
    assert out["direct_ms"] <= (1.5 * RELAYED_RTT + 1.5 * DIRECT_RTT + SLACK) * 1000


def test_a_dialer_that_cannot_prove_the_stamped_id_gets_nothing_delivered() -> None:
    """Registered at the relay as one id, it answers with another identity's key: the relay
    stamps the registered id, the proof names another one."""

    async def body(world: World, ea: Endpoint, eb: Endpoint) -> dict[str, Any]:
        ea.identity = Identity.generate()  # the wrong key, after registering
        return await _refused_quietly(ea, eb)

    out = run(_world(body, config=EndpointConfig(direct=False)), seed=2)
    assert not out["accepted"]
    assert out["stats"].get("accepted", 0) == 0 and out["stats"]["incoming_failed"] == 1
    if out["dialer_error"] is None:
        assert out["dialer_closed"], out
        assert "peer id differs" in out["close_reason"]


def test_a_replayed_proof_from_another_connection_proves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay saw the dialer's PeerAuth of an earlier call and plays it into a new one: its
    signature covers the earlier connection's channel binding, not this one's."""
    captured: list[bytes] = []
    real_sign = peerauth.sign_exporter

    def replaying_sign(identity: Identity, binding: bytes) -> bytes:
        if not captured:
            captured.append(real_sign(identity, binding))  # the first call: genuine
        return captured[0]  # later calls: the captured proof, replayed

    monkeypatch.setattr(peerauth, "sign_exporter", replaying_sign)

    async def body(world: World, ea: Endpoint, eb: Endpoint) -> dict[str, Any]:
        accept = asyncio.ensure_future(eb.accept())
        first = await ea.connect(eb.peer_id)
        await accept
        await first.close()
        return await _refused_quietly(ea, eb)

    out = run(_world(body, config=EndpointConfig(direct=False)), seed=3)
    assert not out["accepted"]
    assert out["stats"]["accepted"] == 1  # the genuine first call only
    assert out["stats"]["incoming_failed"] == 1
    if out["dialer_error"] is None:
        assert "bad peer authentication" in out["close_reason"]


def test_a_relay_tampering_with_the_first_flights_delays_but_alters_nothing() -> None:
    """The relay flips a bit in the first short-header (1-RTT) packets both ways: the 0.5-RTT
    answer, the dialer's proof and its first frames. QUIC drops each; what is delivered is
    intact and the call is set up once the retransmissions pass."""
    flipped = {"n": 0}

    def flip_first(payload: bytes) -> bytes:
        if payload[0] & 0x80 or flipped["n"] >= 6:  # long header (Initial/Handshake): pass
            return payload
        flipped["n"] += 1
        mid = len(payload) // 2
        return payload[:mid] + bytes([payload[mid] ^ 0x20]) + payload[mid + 1 :]

    async def body(world: World, ea: Endpoint, eb: Endpoint) -> dict[str, Any]:
        server = asyncio.ensure_future(serve_endpoint(eb))
        try:
            return await run_echo_session(ea, eb.peer_id, duration=2.0, pps=50)
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)

    out = run(_world(body, payload_filter=flip_first), seed=4)
    assert flipped["n"] == 6
    assert out["frames_corrupt"] == 0 and out["frames_lost"] < out["frames_sent"]
    assert out["connected_ms"] > RELAYED_RTT * 1000  # the first answer was lost: later
