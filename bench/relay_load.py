"""Paced load through our relay: two registered clients on loopback, one sending to the other.

Shared by the relay forwarding benchmark (bench/run.py) and the relay-vs-coturn CPU benchmark
(bench/relay_vs_coturn.py) so both offer exactly the same load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

#: Sends are issued in bursts every 5 ms (200 ticks per second) to hold the offered rate.
TICKS_PER_S = 200
#: Wait after the last send for frames still in flight.
STRAGGLER_WAIT_S = 0.3


@dataclass
class LoadResult:
    sent: int
    delivered: int
    elapsed: float  # seconds spent sending (the straggler wait excluded)


async def offer_load(
    relay: tuple[str, int],
    pps: float,
    total: int,
    *,
    payload_size: int = 160,
    settle: float = 0.0,
    on_start: Callable[[], None] | None = None,
) -> LoadResult:
    """Register two clients, send ``total`` frames at ``pps``, count what arrives."""
    from punchthrough.identity import Identity
    from punchthrough.netio import UdpNetwork
    from punchthrough.relay import RelayClient
    from punchthrough.transport import DatagramMux

    net = UdpNetwork()
    socks, muxes, clients = [], [], []
    try:
        for _ in range(2):
            sock = await net.bind("127.0.0.1")
            mux = DatagramMux(sock)
            socks.append(sock)
            muxes.append(mux)
            clients.append(await RelayClient.connect(mux, relay, Identity.generate(), timeout=5.0))
        a, b = clients
        got = 0

        def on_frame(src: object, payload: bytes) -> None:
            nonlocal got
            got += 1

        b.set_receiver(on_frame)
        payload = bytes(payload_size)
        loop = asyncio.get_running_loop()
        burst = max(1, int(pps) // TICKS_PER_S)
        if settle:
            await asyncio.sleep(settle)
        if on_start is not None:
            on_start()
        t0 = loop.time()
        sent = 0
        while sent < total:
            for _ in range(min(burst, total - sent)):
                a.send(b.peer_id, payload)
                sent += 1
            await asyncio.sleep(max(0.0, t0 + sent / pps - loop.time()))
        elapsed = loop.time() - t0
        await asyncio.sleep(STRAGGLER_WAIT_S)
        return LoadResult(sent, got, elapsed)
    finally:
        for c in clients:
            await c.close()
        for m in muxes:
            m.close()
        for s in socks:
            s.close()
