"""The relay under abuse, in the simulator's virtual time (issue 12): forged QUIC Initials."""

from __future__ import annotations

import asyncio
import random

import pytest

from punchthrough.identity import Identity
from punchthrough.netio import Address
from punchthrough.relay import RelayClient, RelayLookupRefused, RelayServer
from punchthrough.relay.frames import (
    FRAME_TOKEN_BYTES,
    NOTICE_UNKNOWN_DESTINATION,
    encode_data,
    encode_notice,
)
from punchthrough.signal import RELAY_RATE_LIMITED
from punchthrough.sim import World, run
from punchthrough.stun import Message, MessageClass, Method, encode
from punchthrough.stun.ratelimit import RateLimit
from punchthrough.transport import DatagramMux
from punchthrough.transport.quic import host_cids

pytestmark = pytest.mark.sim

RELAY: Address = ("198.51.100.20", 3478)
#: The issue's attack: 3,000 forged Initials per second, 15x the relay's default refill
#: (RelayLimits.new_connections_per_second = 200), enough to keep the bucket empty.
FORGED_PER_SECOND = 3000
#: The issue's target for registering while under that attack.
REGISTER_TARGET = 0.100
#: Evenly spaced, as a steady attacker sends (bursts would leave gaps for the legitimate
#: client); bounded: FLOOD_SECONDS of virtual time.
FLOOD_SECONDS = 1.5
FORGED = int(FORGED_PER_SECOND * FLOOD_SECONDS)
#: Frames of each kind forged with the relay's source address (bounded).
FORGED_FRAMES = 50


def forged_initial(rng: random.Random) -> bytes:
    """A plausible QUIC v1 Initial header (random CIDs) over 1,200 random bytes."""
    return (
        bytes([0xC3])
        + (1).to_bytes(4, "big")
        + b"\x08"
        + rng.randbytes(8)
        + b"\x08"
        + rng.randbytes(8)
        + b"\x00"  # no token
        + b"\x44\xb0"  # Length 1200
        + rng.randbytes(1200)
    )


def test_forged_initials_do_not_delay_registration() -> None:
    async def go(forged: int) -> tuple[float, dict[str, int], int]:
        w = World(0)
        relay_host = w.add_host("relay", RELAY[0])
        server = await RelayServer.start(relay_host, [RELAY])
        attacker = await w.add_host("attacker", "203.0.113.66").bind()
        rng = random.Random(7)

        async def flood() -> None:
            for _ in range(forged):
                attacker.sendto(forged_initial(rng), RELAY)
                await asyncio.sleep(1 / FORGED_PER_SECOND)

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.5)  # the bucket (burst 400) is long empty at 3,000/s
        sock = await w.add_host("alice", "203.0.113.1").bind()
        mux = DatagramMux(sock)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        client = await RelayClient.connect(mux, RELAY, Identity.generate(), timeout=10)
        took = loop.time() - t0
        await flooding
        await asyncio.sleep(0.1)
        stats = server.stats
        # CIDs routed by the relay's demux beyond those of the one legitimate connection
        (ctl,) = server._control.connections
        assert ctl.driver is not None
        legit = len(host_cids(ctl.driver.connection)) + 1  # + the client's original DCID
        muxed = sum(len(m._quic) for m in server._muxes.values()) - legit
        await client.close()
        mux.close()
        sock.close()
        await server.close()
        return took, stats, muxed

    quiet, _, _ = run(go(0), seed=0)
    took, stats, muxed = run(go(FORGED), seed=0)
    assert took <= REGISTER_TARGET, f"registration took {took * 1000:.0f} ms under attack"
    assert took == pytest.approx(quiet, abs=1e-6)  # exactly as fast as with no attack (40 ms)
    # every forged Initial was dropped as junk, before any token or state
    assert stats["initials_undecryptable"] == FORGED
    assert stats["initials_over_rate"] == 0
    assert stats["connections_accepted"] == 1 and stats["connections"] == 1
    assert muxed == 0  # no CID routed for any junk Initial


#: Lookups the probing client sends back to back (bounded; 5x the default burst).
PROBES = 100
#: RelayLimits' defaults (lookup_burst, lookups_per_second), spelled out so that this test
#: also runs, and fails on behaviour, against a relay that predates them.
LOOKUP_BURST, LOOKUPS_PER_SECOND = 20, 1.0


def test_lookups_in_a_loop_are_limited_and_counted() -> None:
    """Issue 12, finding 7: a client probing presence in a loop gets 429 past its budget; a
    normal client's lookups still work, and so does the prober's once its budget refills."""

    async def go() -> None:
        w = World(0)
        server = await RelayServer.start(w.add_host("relay", RELAY[0]), [RELAY])
        socks, clients = [], []
        for name, ip in (("prober", "203.0.113.1"), ("bob", "203.0.113.2")):
            sock = await w.add_host(name, ip).bind()
            mux = DatagramMux(sock)
            socks.append((sock, mux))
            clients.append(await RelayClient.connect(mux, RELAY, Identity.generate(), timeout=5))
        prober, bob = clients
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        answered = refused = 0
        for _ in range(PROBES):
            try:
                await prober.lookup(Identity.generate().peer_id)
                answered += 1
            except RelayLookupRefused as exc:
                assert exc.code == RELAY_RATE_LIMITED
                refused += 1
        elapsed = loop.time() - t0
        assert answered <= LOOKUP_BURST + LOOKUPS_PER_SECOND * elapsed + 1, answered
        assert refused >= PROBES - answered and refused >= 50
        stats = server.stats
        assert stats["lookups_rate_limited"] == refused and stats["lookups"] == answered
        per_client = {p.peer_id: p.stats for p in server.peers()}
        assert per_client[prober.peer_id]["lookups_rate_limited"] == refused
        # a normal client is unaffected; the prober's connection stayed up and refills
        assert await bob.lookup(prober.peer_id) == (RELAY,)
        await asyncio.sleep(1 / LOOKUPS_PER_SECOND)
        assert await prober.lookup(bob.peer_id) == (RELAY,)
        for client in clients:
            await client.close()
        for sock, mux in socks:
            mux.close()
            sock.close()
        await server.close()

    run(go(), seed=0)


def test_a_stun_flood_is_limited_and_shown_in_the_relays_stats() -> None:
    """Issue 12, finding 4: the relay's STUN answers are limited per source, and its stats say
    how many it withheld; another source is still answered."""
    flood = 500

    async def go() -> dict[str, int]:
        w = World(0)
        server = await RelayServer.start(w.add_host("relay", RELAY[0]), [RELAY])
        attacker = await w.add_host("attacker", "203.0.113.66").bind()
        honest = await w.add_host("honest", "203.0.113.7").bind()
        got: list[bytes] = []
        honest.set_receiver(lambda data, addr: got.append(data))
        try:
            request = encode(Message(Method.BINDING, MessageClass.REQUEST))
            for _ in range(flood):  # all at one virtual instant: no token comes back
                attacker.sendto(request, RELAY)
            honest.sendto(encode(Message(Method.BINDING, MessageClass.REQUEST)), RELAY)
            await asyncio.sleep(0.5)
            assert len(got) == 1  # the other source is answered
            return server.stats
        finally:
            attacker.close()
            honest.close()
            await server.close()

    stats = run(go(), seed=1)
    assert stats["stun_rate_limited"] == flood - RateLimit().burst, stats
    assert stats["stun"] >= RateLimit().burst + 1, stats


def test_frames_forged_from_the_relays_address_reach_nothing() -> None:
    """DATA and NOTICE frames sent to a client's mapping from the relay's address with a
    guessed frame token are dropped and counted by the client; the relay's own still arrive."""
    rng = random.Random(3)

    async def go() -> tuple[dict[str, int], list[bytes], list[int]]:
        w = World(0)
        server = await RelayServer.start(w.add_host("relay", RELAY[0]), [RELAY])
        socks, muxes, clients = [], [], []
        for ip in ("203.0.113.1", "203.0.113.2"):
            sock = await w.add_host(ip, ip).bind()
            mux = DatagramMux(sock)
            socks.append(sock)
            muxes.append(mux)
            clients.append(await RelayClient.connect(mux, RELAY, Identity.generate(), timeout=5))
        alice, bob = clients
        payloads: list[bytes] = []
        notices: list[int] = []
        bob.set_receiver(lambda _peer, payload: payloads.append(payload))
        bob.set_notice_handler(lambda code, _peer: notices.append(code))
        mallory = w.add_host("mallory", "192.0.2.66")
        guess = rng.randbytes(FRAME_TOKEN_BYTES)
        for _ in range(FORGED_FRAMES):
            w.send_spoofed(
                mallory, RELAY, bob.observed_address, encode_data(alice.peer_id, guess, b"x")
            )
            w.send_spoofed(
                mallory,
                RELAY,
                bob.observed_address,
                encode_notice(NOTICE_UNKNOWN_DESTINATION, alice.peer_id, guess),
            )
        alice.send(bob.peer_id, b"real")
        await asyncio.sleep(0.1)
        stats = bob.stats
        for client in clients:
            await client.close()
        for mux, sock in zip(muxes, socks, strict=True):
            mux.close()
            sock.close()
        await server.close()
        return stats, payloads, notices

    stats, payloads, notices = run(go(), seed=0)
    assert payloads == [b"real"]
    assert notices == []
    assert stats["dropped_bad_token"] == 2 * FORGED_FRAMES
    assert stats["frames_received"] == 1
