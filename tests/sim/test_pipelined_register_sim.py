"""Relay registration pipelined with the first call (issue 17), in the simulator on virtual time.

Topology: the relay and both peers' NATs on 10 ms one-way WAN links, as in
``test_fastsetup_sim``: a peer is 20 ms from the relay (relay RTT 40 ms = R/2), the peers are
80 ms apart through it (relayed RTT R = 80 ms). The callee is bound (registered) first; the
caller's clock starts at ``Endpoint.bind``.

The fewest round trips from bind to a usable call: the relay's QUIC handshake (R/2: the
registration's signature covers that connection's channel binding, which exists only once the
handshake completes), then ``RelayRegister`` and, right behind it in the same flight, the first
call's QUIC Initial as a SEND frame (the frame token is derived from the same handshake);
the relay forwards it the moment it registers us, the callee answers with its 0.5-RTT flight:
R/2 + R = 1.5 R = 120 ms. Without pipelining: R/2 more for ``RelayRegistered`` (2 R).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from test_fastsetup_sim import _place

from punchthrough.endpoint import Endpoint, EndpointConfig, NoRelay, PeerUnreachable
from punchthrough.identity import Identity
from punchthrough.netio import Address
from punchthrough.relay import RelayLimits, RelayServer
from punchthrough.sim import Host, Link, World, run

T = TypeVar("T")
RELAY: Address = ("198.51.100.20", 3478)
WAN_LINK = Link(0.010)
RELAYED_RTT = 0.080
#: The issue's slack on top of the round trips ("<= 1 relayed RTT + 10 ms").
SLACK = 0.010
#: Virtual time is exact, up to float rounding.
EPS = 1e-9
PIPELINED = EndpointConfig(direct=False, pipeline_registration=True)


async def _world(
    body: Callable[[Host, Endpoint, RelayServer], Awaitable[T]],
    *,
    limits: RelayLimits | None = None,
    relay_up: bool = True,
) -> T:
    world = World()
    relay_host = world.add_host("relay", RELAY[0], link=WAN_LINK)
    relay = await RelayServer.start(relay_host, [RELAY], limits=limits) if relay_up else None
    try:
        a_host, b_host = _place(world, "a", "eim-apdf", 1), _place(world, "b", "eim-apdf", 2)
        idb = Identity.from_private_bytes(b"\x02" * 32)
        b_cfg = EndpointConfig(direct=False)
        if relay is None:
            return await body(a_host, None, relay)  # type: ignore[arg-type]
        async with Endpoint.bind(idb, relays=[RELAY], network=b_host, config=b_cfg) as eb:
            return await body(a_host, eb, relay)
    finally:
        if relay is not None:
            await relay.close()


async def _bind_and_connect(
    a_host: Host, peer: Any, config: EndpointConfig
) -> tuple[float, float, Endpoint]:
    """(bind returned, connect returned), seconds from the bind call; the open endpoint."""
    loop = asyncio.get_running_loop()
    ida = Identity.from_private_bytes(b"\x01" * 32)
    start = loop.time()
    ea = await Endpoint.bind(ida, relays=[RELAY], network=a_host, config=config)
    bound = loop.time() - start
    try:
        await ea.connect(peer)
    except BaseException:
        await ea.close()
        raise
    return bound, loop.time() - start, ea


def test_bind_to_usable_in_one_and_a_half_relayed_round_trips() -> None:
    async def body(a_host: Host, eb: Endpoint, relay: RelayServer) -> dict[str, Any]:
        accept = asyncio.ensure_future(eb.accept())
        bound, usable, ea = await _bind_and_connect(a_host, eb.peer_id, PIPELINED)
        try:
            await accept
            return {
                "bound": bound,
                "usable": usable,
                "registered": ea.relay_addresses,
                "relay": relay.stats,
                "candidates": len(ea.local_candidates.candidates),
            }
        finally:
            await ea.close()

    out = run(_world(body), seed=1)
    # bind: the relay's handshake (R/2); gathering (a STUN Binding to the relay) ran alongside
    assert RELAYED_RTT / 2 - EPS <= out["bound"] <= RELAYED_RTT / 2 + SLACK
    assert 1.5 * RELAYED_RTT - EPS <= out["usable"] <= 1.5 * RELAYED_RTT + SLACK
    assert out["registered"] == [RELAY]  # the answer came in the background
    assert out["candidates"] >= 2  # host + the server-reflexive one the relay's STUN gave
    # the Initial overtook the relay's processing of RelayRegister: held, then forwarded,
    # never dropped (a drop would cost a QUIC probe timeout, 200 ms)
    assert out["relay"]["early_frames_held"] >= 1
    assert out["relay"]["early_frames_dropped"] == 0
    assert out["relay"]["dropped_unregistered"] == 0


def test_without_pipelining_registration_costs_its_round_trip() -> None:
    """The default (a listener's) bind still waits for RelayRegistered: 2 R to usable."""

    async def body(a_host: Host, eb: Endpoint, relay: RelayServer) -> tuple[float, float]:
        accept = asyncio.ensure_future(eb.accept())
        config = EndpointConfig(direct=False)
        bound, usable, ea = await _bind_and_connect(a_host, eb.peer_id, config)
        await accept
        await ea.close()
        return bound, usable

    bound, usable = run(_world(body), seed=1)
    assert bound >= RELAYED_RTT - EPS
    assert usable >= 2 * RELAYED_RTT - EPS


def test_a_refused_registration_fails_the_dial_at_once() -> None:
    """The relay is full: bind (pipelined) returns after the handshake, and connect() fails
    with the relay's reason as soon as its answer comes, not at the connect timeout."""

    async def body(a_host: Host, eb: Endpoint, relay: RelayServer) -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(NoRelay) as err:
            await _bind_and_connect(a_host, eb.peer_id, PIPELINED)
        return str(err.value), loop.time() - start

    message, elapsed = run(_world(body, limits=RelayLimits(max_clients=1)), seed=2)
    assert "no relay registered us: 198.51.100.20:3478" in message
    assert "relay is full" in message
    assert elapsed <= RELAYED_RTT + SLACK  # handshake + the refusal: one relay round trip


def test_a_dial_to_an_unknown_peer_through_a_registering_relay_is_unreachable() -> None:
    """The held Initial is forwarded once we are registered, and its unknown destination
    answered with a NOTICE, so the dial fails fast as before."""

    async def body(a_host: Host, eb: Endpoint, relay: RelayServer) -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        stranger = Identity.from_private_bytes(b"\x03" * 32).peer_id
        start = loop.time()
        with pytest.raises(PeerUnreachable) as err:
            await _bind_and_connect(a_host, stranger, PIPELINED)
        return str(err.value), loop.time() - start

    message, elapsed = run(_world(body), seed=3)
    assert "is not registered with 198.51.100.20:3478" in message
    assert elapsed <= RELAYED_RTT + SLACK  # the NOTICE comes back with RelayRegistered


def test_relay_down_fails_bind_within_the_relay_timeout() -> None:
    async def body(a_host: Host, eb: Endpoint, relay: RelayServer) -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        config = EndpointConfig(direct=False, pipeline_registration=True, relay_timeout=1.0)
        start = loop.time()
        with pytest.raises(NoRelay) as err:
            await _bind_and_connect(a_host, "pt1" + "a" * 52, config)
        return str(err.value), loop.time() - start

    message, elapsed = run(_world(body, relay_up=False), seed=4)
    assert "did not register us within 1.0 s" in message
    assert 1.0 - EPS <= elapsed <= 1.0 + SLACK
