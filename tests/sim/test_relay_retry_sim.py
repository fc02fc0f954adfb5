"""The relay under a flood of real QUIC Initials (issue 12, finding 5): Retry before state."""

from __future__ import annotations

import asyncio

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from punchthrough.identity import Identity
from punchthrough.netio import Address
from punchthrough.relay import RelayClient, RelayError, RelayLimits, RelayServer
from punchthrough.relay.frames import RELAY_ALPN
from punchthrough.relay.limits import CONNECTION_BYTES
from punchthrough.sim import World, run
from punchthrough.transport import DatagramMux

pytestmark = pytest.mark.sim

RELAY: Address = ("198.51.100.20", 3478)
#: Real (decryptable) Initials from as many source addresses, 3,000 per second (the issue's
#: attack rate, 15x RelayLimits.new_connections_per_second): 0.3 s of virtual time.
FLOOD = 900
FLOOD_PER_SECOND = 3000
#: RelayLimits' defaults (new_connection_burst, new_connections_per_second) and retry.py's
#: RETRY_LOAD_FRACTION, spelled out so that this test also runs, and fails on behaviour,
#: against a relay without Retry.
BURST, RATE, LOAD_FRACTION = 400, 200.0, 0.5
#: retry.py's HALF_OPEN_LOAD: past this many unregistered connections every Initial gets Retry.
HALF_OPEN = 200
#: The issue's target for registering while under attack.
REGISTER_TARGET = 0.100


def real_initial(dest: Address) -> bytes:
    """A genuine client Initial (fresh CIDs), as aioquic (our client's QUIC stack) sends it."""
    conn = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=[RELAY_ALPN])
    )
    conn.connect(dest, now=0.0)
    return conn.datagrams_to_send(now=0.0)[0][0]


def flood_source(i: int) -> str:
    """198.18.0.0/15 (RFC 2544 benchmarking): one attacker address per Initial."""
    return f"198.18.{i // 250}.{i % 250 + 1}"


def test_flood_of_real_initials_gets_retry_and_no_state() -> None:
    initials = [real_initial(RELAY) for _ in range(FLOOD)]

    async def go() -> tuple[float, dict[str, int], int]:
        w = World(0)
        server = await RelayServer.start(w.add_host("relay", RELAY[0]), [RELAY])
        # the attacker sends from FLOOD addresses and never answers (spoofed, in effect)
        attacker = w.add_host("attacker", *(flood_source(i) for i in range(FLOOD)))
        socks = [await attacker.bind(flood_source(i)) for i in range(FLOOD)]
        loop = asyncio.get_running_loop()
        t_flood = loop.time()

        async def flood() -> None:
            for sock, initial in zip(socks, initials, strict=True):
                sock.sendto(initial, RELAY)
                await asyncio.sleep(1 / FLOOD_PER_SECOND)

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.2)  # 600 Initials in: far past half the bucket
        sock = await w.add_host("alice", "203.0.113.1").bind()
        mux = DatagramMux(sock)
        t0 = loop.time()
        client = await RelayClient.connect(mux, RELAY, Identity.generate(), timeout=10)
        took = loop.time() - t0
        await flooding
        await asyncio.sleep(0.1)  # the last Initials arrive
        elapsed = loop.time() - t_flood
        stats = server.stats
        held = len(server._control.connections)
        await client.close()
        mux.close()
        sock.close()
        for s in socks:
            s.close()
        await server.close()
        # connections made without Retry: those before the relay was under load; the
        # bucket's refill (RATE * elapsed) admits no more, as the half-open count stays high
        assert held <= min(BURST * LOAD_FRACTION, HALF_OPEN) + 1, (held, elapsed)
        return took, stats, held

    took, stats, held = run(go(), seed=0)
    assert took <= REGISTER_TARGET, f"registration took {took * 1000:.0f} ms under attack"
    assert stats["registrations"] == 1
    # the flood got Retries, at no new-connection token and with no connection state
    # alice got one Retry too, answered it and is held: every other Initial got a Retry
    assert stats["retries_sent"] + held == FLOOD + 2
    assert stats["initials_over_rate"] == 0  # the bucket never ran dry
    assert stats["initials_undecryptable"] == 0  # they were all real Initials


def test_relay_client_follows_retry() -> None:
    """Our relay client (aioquic) answers a Retry transparently and registers."""

    async def go() -> tuple[dict[str, int], float]:
        w = World(0)
        limits = RelayLimits(retry="always")
        server = await RelayServer.start(w.add_host("relay", RELAY[0]), [RELAY], limits=limits)
        sock = await w.add_host("alice", "203.0.113.1").bind()
        mux = DatagramMux(sock)
        identity = Identity.generate()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        client = await RelayClient.connect(mux, RELAY, identity, timeout=5)
        took = loop.time() - t0
        (ctl,) = server._control.connections
        assert ctl.driver is not None
        # the relay sent retry_source_connection_id: the client checked it (RFC 9000 7.3)
        assert ctl.driver.connection._retry_source_connection_id is not None
        assert [p.peer_id for p in server.peers()] == [identity.peer_id]
        stats = server.stats
        await client.close()
        mux.close()
        sock.close()
        await server.close()
        return stats, took

    stats, took = run(go(), seed=0)
    assert stats["retries_sent"] == 1 and stats["retry_tokens_invalid"] == 0
    assert stats["registrations"] == 1 and stats["connections_accepted"] == 1
    assert took < 1.0  # one extra round trip, not a timeout


#: Distinct source addresses in one /64 (RFC 3849 documentation prefix), one Initial each.
SAME_64 = 300
#: RelayLimits' default max_connections_per_ip.
PER_IP = 256


def test_one_ipv6_64_is_capped_like_one_ip() -> None:
    """The simulator is IPv4-only, so the Initials are handed to ``ControlPlane.accept`` as if
    they came from IPv6 sources; the relay's answers to them are simply not routed."""
    initials = [real_initial(RELAY) for _ in range(SAME_64)]
    sources = [(f"2001:db8:6:4::{i + 1:x}", 40000) for i in range(SAME_64)]

    async def go() -> dict[str, int]:
        w = World(0)
        # no Retry and a bucket that never empties: only the per-prefix cap can refuse
        no_retry = {"retry": "never"} if "retry" in RelayLimits.__dataclass_fields__ else {}
        limits = RelayLimits(new_connection_burst=4 * SAME_64, **no_retry)  # type: ignore[arg-type]
        server = await RelayServer.start(w.add_host("relay", RELAY[0]), [RELAY], limits=limits)
        for source, initial in zip(sources, initials, strict=True):
            server._control.accept(initial, source, local=RELAY)
            await asyncio.sleep(0.001)
        stats = server.stats
        await server.close()
        return stats

    stats = run(go(), seed=0)
    assert stats["connections"] == PER_IP
    assert stats["initials_over_limit"] == SAME_64 - PER_IP


def test_a_full_relay_refuses_new_clients_and_keeps_serving_its_own() -> None:
    """``RelayLimits.memory_budget``: a relay whose budget holds three connections registers
    three clients, refuses the fourth with a clear client-side timeout (no state on the relay)
    and still forwards between the three."""
    limits = RelayLimits(memory_budget=3 * CONNECTION_BYTES + CONNECTION_BYTES // 2)
    assert limits.connection_cap == 3

    async def go() -> tuple[dict[str, int], list[bytes], int]:
        w = World(0)
        server = await RelayServer.start(w.add_host("relay", RELAY[0]), [RELAY], limits=limits)
        socks, muxes, clients = [], [], []
        for i in range(4):
            sock = await w.add_host(f"c{i}", f"203.0.113.{i + 1}").bind()
            mux = DatagramMux(sock)
            socks.append(sock)
            muxes.append(mux)
            try:
                client = await RelayClient.connect(mux, RELAY, Identity.generate(), timeout=3)
            except RelayError:
                continue
            clients.append(client)
        got: list[bytes] = []
        clients[1].set_receiver(lambda _peer, payload: got.append(payload))
        clients[0].send(clients[1].peer_id, b"still served")
        await asyncio.sleep(0.1)
        held = len(server._control.connections)
        stats = server.stats
        for client in clients:
            await client.close()
        for mux, sock in zip(muxes, socks, strict=True):
            mux.close()
            sock.close()
        await server.close()
        assert len(clients) == 3
        return stats, got, held

    stats, got, held = run(go(), seed=0)
    assert held == 3
    assert stats["registrations"] == 3
    assert stats["initials_over_limit"] >= 1  # the fourth client's Initials, each refused
    assert got == [b"still served"]


def test_memory_budget_is_checked() -> None:
    with pytest.raises(ValueError, match="memory_budget"):
        RelayLimits(memory_budget=CONNECTION_BYTES - 1)
    assert RelayLimits().connection_cap == RelayLimits().max_connections
