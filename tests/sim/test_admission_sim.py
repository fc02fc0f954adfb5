"""Issue 12, finding 1: a registered peer flooding Initials through the relay must not stop a
peer from accepting other callers (simulator, virtual time; topology of test_endpoint_sim).

Before the fix every relayed Initial nobody owned took one of the 64 pending slots for up to
10 s, decryptable or not: ~6.4 Initials/s from one attacker left no slot for anyone else.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from aioquic.quic.connection import QuicConnection

from punchthrough.apps.echo import run_echo_session, serve_endpoint
from punchthrough.endpoint import Endpoint, EndpointConfig
from punchthrough.endpoint.config import quic_configuration
from punchthrough.identity import Identity, PeerId
from punchthrough.netio import Address
from punchthrough.relay import RelayServer
from punchthrough.relay.frames import FRAME_DATA, FRAME_TOKEN_BYTES, PEER_ID_BYTES
from punchthrough.sim import Host, Link, World, profile, run

RELAY: Address = ("198.51.100.20", 3478)
WAN_LINK = Link(0.010)
RELAY_ONLY = EndpointConfig(direct=False)
#: Attack rate (Initials per second through the relay): 3x the ~6.4/s that filled the
#: 64-slot backlog (each slot held 10 s) before the fix.
FLOOD_PER_S = 20
#: The flood starts this long before the call (the old backlog was full after 64/20 = 3.2 s)
#: and runs through the call; bounded: FLOOD_PER_S * (FLOOD_LEAD + CALL_S + 1) packets.
FLOOD_LEAD = 5.0
CALL_S = 5.0
#: Echo frames per second of the legitimate call.
PPS = 50
#: A QUIC v1 client Initial, padded to the 1200-byte minimum (RFC 9000 section 14.1).
INITIAL_SIZE = 1200

#: Makes the attacker's next packet(s), each an Initial-shaped datagram.
Forge = Callable[[], list[bytes]]


def _identity(n: int) -> Identity:
    return Identity.from_private_bytes(bytes([n]) * 32)


def junk_forge(seed: int) -> Forge:
    """Random bytes behind a valid-looking long header: Initial type, version 1, 8-byte CIDs,
    a length that covers the rest. Passes ``is_initial``; nothing in it decrypts."""
    rng = random.Random(seed)

    def forge() -> list[bytes]:
        head = (
            bytes([0xC0, 0, 0, 0, 1, 8])
            + rng.randbytes(8)
            + bytes([8])
            + rng.randbytes(8)
            + b"\x00"  # no token
        )
        rest = INITIAL_SIZE - len(head) - 2
        return [head + (0x4000 | rest).to_bytes(2, "big") + rng.randbytes(rest)]

    return forge


def real_forge(identity: Identity) -> Forge:
    """The first flight of a fresh, real punchthrough QUIC client: it decrypts and opens a TLS
    handshake, but the attacker never answers, so peer authentication never happens."""
    cfg = quic_configuration(identity, is_client=True, config=RELAY_ONLY)

    def forge() -> list[bytes]:
        quic = QuicConnection(configuration=cfg)
        now = asyncio.get_running_loop().time()
        quic.connect(("192.0.2.1", 1), now=now)
        return [data for data, _ in quic.datagrams_to_send(now=now)]

    return forge


#: Sends one attack packet to the victim.
Deliver = Callable[[bytes], None]


def through_relay(attacker: Endpoint, target: PeerId) -> Deliver:
    """Mallory's packets as SEND frames through the relay she registered with."""
    client = attacker.relays[RELAY]
    return lambda packet: client.send(target, packet)


def spoofing_the_relay(world: World, mallory: Host, victim: Endpoint) -> Deliver:
    """Mallory's packets straight to the victim's public mapping, from the relay's address,
    each as a DATA frame from a fresh sender id (so no per-sender cap applies) with a guessed
    frame token: what an off-path attacker who learned the mapping can do."""
    rng = random.Random(67)
    mapping = victim.relays[RELAY].observed_address

    def deliver(packet: bytes) -> None:
        frame = bytes([FRAME_DATA]) + rng.randbytes(PEER_ID_BYTES + FRAME_TOKEN_BYTES) + packet
        world.send_spoofed(mallory, RELAY, mapping, frame)

    return deliver


async def _flood(deliver: Deliver, forge: Forge, duration: float) -> int:
    """Send ``forge()`` FLOOD_PER_S times a second, for at most ``duration`` seconds (a
    bounded loop)."""
    sent = 0
    for _ in range(int(FLOOD_PER_S * duration)):
        for packet in forge():
            deliver(packet)
            sent += 1
        await asyncio.sleep(1.0 / FLOOD_PER_S)
    return sent


async def _call_under_attack(
    make_forge: Callable[[], Forge] | None, *, spoof: bool = False
) -> dict[str, Any]:
    """A calls B (both behind NATs) while M (registered at the same relay) floods B: through
    the relay, or (``spoof``) straight to B's mapping from the relay's address."""
    world = World()
    relay_host = world.add_host("relay", RELAY[0], link=WAN_LINK)
    relay = await RelayServer.start(relay_host, [RELAY])
    try:
        hosts: list[Host] = []
        for n, name in ((1, "a"), (2, "b")):
            cfg = profile("eim-apdf")
            assert cfg is not None
            box = world.add_nat(
                f"nat-{name}", cfg, f"203.0.113.{n}", inside_ip=f"10.0.{n}.1", link=WAN_LINK
            )
            hosts.append(box.add_host(name, f"10.0.{n}.2", link=Link(0.0)))
        mallory = world.add_host("mallory", "192.0.2.66", link=WAN_LINK)
        async with (
            Endpoint.bind(_identity(1), relays=[RELAY], network=hosts[0], config=RELAY_ONLY) as ea,
            Endpoint.bind(_identity(2), relays=[RELAY], network=hosts[1], config=RELAY_ONLY) as eb,
            Endpoint.bind(_identity(66), relays=[RELAY], network=mallory, config=RELAY_ONLY) as em,
        ):
            flood = None
            if make_forge is not None:
                duration = FLOOD_LEAD + CALL_S + 1.0
                deliver = (
                    spoofing_the_relay(world, mallory, eb)
                    if spoof
                    else through_relay(em, eb.peer_id)
                )
                flood = asyncio.ensure_future(_flood(deliver, make_forge(), duration))
                await asyncio.sleep(FLOOD_LEAD)
            server = asyncio.ensure_future(serve_endpoint(eb))
            try:
                result = await run_echo_session(ea, eb.peer_id, duration=CALL_S, pps=PPS)
            finally:
                server.cancel()
                await asyncio.gather(server, return_exceptions=True)
            if flood is not None:
                result["flood_sent"] = await flood
            result["b_stats"] = eb.stats
            result["b_relay_stats"] = eb.relays[RELAY].stats
            return result
    finally:
        await relay.close()


def _baseline() -> dict[str, Any]:
    return run(_call_under_attack(None), seed=5)


def _assert_call_unharmed(attacked: dict[str, Any], baseline: dict[str, Any]) -> None:
    took, usual = attacked["connected_ms"], baseline["connected_ms"]
    assert took <= 2 * usual, f"connected after {took} ms under attack, {usual} ms without"
    assert attacked["frames_lost"] <= 0.01 * attacked["frames_sent"]
    assert attacked["frames_corrupt"] == 0


def test_junk_initials_take_no_slot_and_the_call_connects_as_fast() -> None:
    baseline = _baseline()
    assert baseline["frames_lost"] == 0
    attacked = run(_call_under_attack(lambda: junk_forge(seed=66)), seed=5)
    _assert_call_unharmed(attacked, baseline)
    stats = attacked["b_stats"]
    # every junk Initial was dropped before any connection was made for it
    assert stats["dropped_incoming_undecryptable"] == attacked["flood_sent"]
    assert stats["incoming"] == 1  # only the legitimate caller


def test_real_initials_from_one_sender_do_not_block_other_callers() -> None:
    baseline = _baseline()
    attacked = run(_call_under_attack(lambda: real_forge(_identity(66))), seed=5)
    _assert_call_unharmed(attacked, baseline)
    stats = attacked["b_stats"]
    cfg = RELAY_ONLY
    assert stats.get("dropped_incoming_undecryptable", 0) == 0  # they were real
    # the attacker never held more than its share: the rest were dropped, its held ones
    # expired unauthenticated (every pending_timeout), and nothing else was refused
    assert stats["dropped_incoming_peer_limit"] > 0
    assert stats["dropped_incoming_unauthenticated"] >= cfg.pending_per_peer
    assert stats.get("dropped_incoming_backlog", 0) == 0
    assert stats["accepted"] == 1


def test_real_initials_forged_from_the_relays_address_take_no_slot() -> None:
    """The forged-source variant of finding 1: real Initials under fresh sender ids, sent to
    B's mapping from the relay's address, filled the 32 slots B keeps per relay (20/s against
    32 slots held 3 s each) and kept a real caller out. The relay's DATA frames now carry B's
    frame token; these carry a guess and are dropped before admission sees them."""
    baseline = _baseline()
    attacked = run(_call_under_attack(lambda: real_forge(_identity(66)), spoof=True), seed=5)
    _assert_call_unharmed(attacked, baseline)
    assert attacked["b_relay_stats"]["dropped_bad_token"] == attacked["flood_sent"]
    stats = attacked["b_stats"]
    assert stats["incoming"] == 1  # only the legitimate caller reached admission
    assert stats.get("dropped_incoming_relay_limit", 0) == 0
