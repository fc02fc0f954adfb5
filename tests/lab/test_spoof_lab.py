"""Issue 12 with real forged source addresses (raw socket, root), on loopback, in real time.

An off-path attacker who knows a client's address sends (1) SEND frames from the client's
address to the relay, and (2) DATA frames from the relay's address to the client. Neither may
cost the client a frame of its real call: the relay checks the sender's frame token, the client
the recipient's.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from punchthrough.identity import Identity
from punchthrough.lab.spoof import SpoofingSender
from punchthrough.netio import Address, UdpNetwork
from punchthrough.relay import RelayClient, RelayServer
from punchthrough.relay.frames import FRAME_TOKEN_BYTES, encode_data, encode_send
from punchthrough.transport import DatagramMux

pytestmark = pytest.mark.lab

#: The real call: 50 frames/s (a 20 ms voice frame) for CALL_S seconds.
CALL_PPS = 50
CALL_S = 3.0
#: Forged frames per second of each kind, for at most FLOOD_S seconds (bounded): 40x the
#: call's rate, past the client's whole packet budget (RelayLimits: 2,000/s) together.
FORGED_PER_S = 2000
FLOOD_S = CALL_S + 1.0

Packet = tuple[Address, Address, bytes]


def _flood(sender: SpoofingSender, packets: list[Packet], stop: threading.Event) -> None:
    """Send ``packets`` round-robin at ``2 * FORGED_PER_S`` a second until stopped or
    FLOOD_S has passed (both kinds interleaved)."""
    t0 = time.monotonic()
    n = 0
    while not stop.is_set() and time.monotonic() - t0 < FLOOD_S:
        due = int((time.monotonic() - t0) * 2 * FORGED_PER_S)
        while n < due:
            sender.send(*packets[n % len(packets)])
            n += 1
        time.sleep(0.002)


async def test_forged_source_frames_cost_a_call_nothing() -> None:
    rng = random.Random(12)
    net = UdpNetwork()
    server = await RelayServer.start(net, [("127.0.0.1", 0)])
    relay = server.addresses[0]
    socks = [await net.bind("127.0.0.1") for _ in range(2)]
    muxes = [DatagramMux(s) for s in socks]
    clients: list[RelayClient] = []
    stop = threading.Event()
    flooder: threading.Thread | None = None
    try:
        for mux in muxes:
            clients.append(await RelayClient.connect(mux, relay, Identity.generate(), timeout=5))
        alice, bob = clients
        got: list[bytes] = []
        bob.set_receiver(lambda _peer, payload: got.append(payload))
        alice_addr, bob_addr = socks[0].local_address, socks[1].local_address
        packets: list[Packet] = []
        for _ in range(64):
            guess = rng.randbytes(FRAME_TOKEN_BYTES)
            packets.append((alice_addr, relay, encode_send(bob.peer_id, guess, b"forged")))
            packets.append((relay, bob_addr, encode_data(alice.peer_id, guess, b"forged")))
        with SpoofingSender() as sender:
            flooder = threading.Thread(target=_flood, args=(sender, packets, stop), daemon=True)
            flooder.start()
            frames = int(CALL_PPS * CALL_S)
            for n in range(frames):
                alice.send(bob.peer_id, b"real" + n.to_bytes(2, "big"))
                await asyncio.sleep(1 / CALL_PPS)
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.to_thread(flooder.join, 5)
            forged = sender.sent
        real = [p for p in got if p.startswith(b"real")]
        assert len(real) >= 0.99 * frames, f"{frames - len(real)} of {frames} real frames lost"
        assert all(p.startswith(b"real") for p in got), "a forged frame reached the client"
        # both kinds were really sent and really arrived, and were counted where dropped
        assert forged >= FORGED_PER_S * CALL_S
        relay_stats = server.stats
        assert relay_stats["dropped_bad_token"] >= 0.5 * forged / 2
        alice_stats = next(p.stats for p in server.peers() if p.peer_id == alice.peer_id)
        assert alice_stats.get("dropped_rate", 0) == 0  # nothing charged to the victim
        assert bob.stats["dropped_bad_token"] >= 0.5 * forged / 2
    finally:
        stop.set()
        if flooder is not None:
            flooder.join(5)
        for client in clients:
            await client.close()
        for mux, sock in zip(muxes, socks, strict=True):
            mux.close()
            sock.close()
        await server.close()
