"""Relay memory under a flood of half-open connections, and per client (issue 12, finding 5).

In the simulator (virtual time, the real relay code), the Python heap measured with
``tracemalloc`` (what the relay allocates; the interpreter's own ~10 MB is not counted):

- ``half_open``: ``FLOOD`` real, decryptable QUIC Initials from as many source addresses
  (198.18.0.0/15, RFC 2544), ``FLOOD_PER_S`` a second, none of which ever answers (spoofed, in
  effect): with ``RelayLimits.retry`` = ``load`` (the default) and ``never``. Figures: the
  connections the relay held at the end, the heap growth at its peak, and per held connection.
- ``registered``: ``CLIENTS`` clients registered and idle: heap per registered client.

These are the figures behind ``relay.limits.CONNECTION_BYTES`` and the README's memory bound.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from typing import Any, Final

#: The issue's "12,000 half-open connection attempts", at the junk-Initial attack rate.
FLOOD: Final = 12_000
FLOOD_PER_S: Final = 3_000
#: Idle registered clients measured together (their per-client figure is the mean).
CLIENTS: Final = 200
RELAY: Final = ("198.51.100.20", 3478)


def _source(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"


def _initials(n: int) -> list[bytes]:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    from punchthrough.relay.frames import RELAY_ALPN

    out = []
    for _ in range(n):
        conn = QuicConnection(
            configuration=QuicConfiguration(is_client=True, alpn_protocols=[RELAY_ALPN])
        )
        conn.connect(RELAY, now=0.0)
        out.append(conn.datagrams_to_send(now=0.0)[0][0])
    return out


def _half_open(initials: list[bytes], retry: str) -> dict[str, Any]:
    from punchthrough.relay import RelayLimits, RelayServer
    from punchthrough.sim import World, run

    async def go() -> dict[str, Any]:
        w = World(0)
        limits = RelayLimits(retry=retry)  # type: ignore[arg-type]
        attacker = w.add_host("attacker", *(_source(i) for i in range(len(initials))))
        socks = [await attacker.bind(_source(i)) for i in range(len(initials))]
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        server = await RelayServer.start(w.add_host("relay", RELAY[0]), [RELAY], limits=limits)
        for sock, initial in zip(socks, initials, strict=True):
            sock.sendto(initial, RELAY)
            await asyncio.sleep(1 / FLOOD_PER_S)
        await asyncio.sleep(0.5)  # the last Initials arrive, handshakes stall
        held = len(server._control.connections)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stats = server.stats
        for s in socks:
            s.close()
        await server.close()
        return {
            "retry": retry,
            "initials": len(initials),
            "connections_held": held,
            "retries_sent": stats.get("retries_sent", 0),
            "heap_peak_mb": round((peak - base) / 1e6, 1),
            "heap_end_mb": round((current - base) / 1e6, 1),
            "kb_per_held_connection": round((current - base) / max(held, 1) / 1e3, 1),
        }

    return run(go(), seed=0)


def _registered(n: int) -> dict[str, Any]:
    from punchthrough.identity import Identity
    from punchthrough.relay import RelayClient, RelayServer
    from punchthrough.sim import World, run
    from punchthrough.transport import DatagramMux

    identities = [Identity.generate() for _ in range(n)]

    async def go() -> dict[str, Any]:
        w = World(0)
        tracemalloc.start()
        server = await RelayServer.start(w.add_host("relay", RELAY[0]), [RELAY])
        hosts = [w.add_host(f"c{i}", _source(i)) for i in range(n)]
        socks = [await h.bind() for h in hosts]
        muxes = [DatagramMux(s) for s in socks]
        await asyncio.sleep(0)
        clients = []
        # measured as the relay's share: the clients live in the same heap, so the relay's
        # heap is taken as (all - clients), with the clients' share measured alone below
        base = tracemalloc.get_traced_memory()[0]
        for mux, ident in zip(muxes, identities, strict=True):
            clients.append(await RelayClient.connect(mux, RELAY, ident, timeout=5))
        await asyncio.sleep(1.0)
        total = tracemalloc.get_traced_memory()[0] - base
        held = len(server._control.connections)
        registered = server.stats.get("registrations", 0)
        tracemalloc.stop()
        for c in clients:
            await c.close()
        for m, s in zip(muxes, socks, strict=True):
            m.close()
            s.close()
        await server.close()
        return {
            "clients": n,
            "registrations": registered,
            "connections_held": held,
            "heap_mb_relay_and_clients": round(total / 1e6, 1),
            # both ends of each control connection are aioquic connections of about the same
            # size, so the relay's share is about half
            "kb_per_registered_client_relay_side_est": round(total / 2 / max(held, 1) / 1e3, 1),
        }

    return run(go(), seed=0)


def bench_relay_memory() -> dict[str, Any]:
    t0 = time.monotonic()
    initials = _initials(FLOOD)
    made = time.monotonic() - t0
    results: dict[str, Any] = {
        "how": __doc__,
        "flood": {"initials": FLOOD, "per_second": FLOOD_PER_S, "make_s": round(made, 1)},
    }
    for retry in ("load", "never"):
        results[f"half_open_retry_{retry}"] = _half_open(initials, retry)
    results["registered"] = _registered(CLIENTS)
    return results


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    print(json.dumps(bench_relay_memory(), indent=2))
