"""A relay fleet in the simulator: three relays sharing a directory, two peers homed on
different relays in a relayed call, and the death of the relay carrying it.

``run_failover_trial`` builds the world (relays at 198.51.100.31-33 with 5/10/15 ms access
links, so every peer ranks them r1 < r2 < r3; peers behind NATs), homes alice on r1 and bob on
r2 (bob's map leaves r1 out, as for a peer in another region), calls bob by peer id alone,
streams 50 pps both ways, then blackholes the relay carrying the call (every packet to or from
it dropped: SIGKILL as the network sees it) and measures, in virtual time, when frames flow
again in each direction and how many were lost. ``directory_lag`` delays every directory write
and lookup (a slow or distant Redis).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, Final

from punchthrough.endpoint import Connection, Endpoint, EndpointConfig
from punchthrough.endpoint.relaymap import RelayInfo, RelayMap
from punchthrough.identity import Identity, PeerId
from punchthrough.netio import Address
from punchthrough.relay import RelayLimits, RelayServer
from punchthrough.relay.directory import HomeEntry, MemoryDirectory
from punchthrough.relay.fleet import FleetConfig
from punchthrough.sim import Host, Link, World, profile, run

RELAYS: Final = (
    ("r1", ("198.51.100.31", 3478), 0.005),
    ("r2", ("198.51.100.32", 3478), 0.010),
    ("r3", ("198.51.100.33", 3478), 0.015),
)
#: Peers' access links: 10 ms one way, 1 ms jitter (the trials differ by seed).
WAN_LINK: Final = Link(0.010, jitter=0.001)
LAN_LINK: Final = Link(0.0)
#: Frames per second each way: a voice call (the issue's 50 pps).
PPS: Final = 50
#: Seconds of call before the relay dies (plus a seeded 0-250 ms: one probe interval), and
#: after: long enough for every recovery we target (2 s) with margin, short enough for 200
#: trials in seconds.
BEFORE: Final = 1.0
AFTER: Final = 5.0


class LaggyDirectory(MemoryDirectory):
    """A shared in-memory directory whose every operation takes ``lag`` seconds (virtual)."""

    def __init__(self, lag: float) -> None:
        super().__init__(clock=asyncio.get_running_loop().time)
        self.lag = lag

    async def publish(self, entries: dict[PeerId, HomeEntry], ttl: float) -> None:
        if self.lag:
            await asyncio.sleep(self.lag)
        await super().publish(entries, ttl)

    async def lookup(self, peer_id: PeerId) -> HomeEntry | None:
        if self.lag:
            await asyncio.sleep(self.lag)
        return await super().lookup(peer_id)


@dataclass
class _Stream:
    """Numbered frames one way over a connection: who got what, when."""

    sent: int = 0
    received: set[int] | None = None
    arrivals: list[float] | None = None

    def __post_init__(self) -> None:
        self.received = set()
        self.arrivals = []


async def _pump(conn: Connection, stream: _Stream, stop: asyncio.Event) -> None:
    while not stop.is_set():
        conn.send_datagram(stream.sent.to_bytes(4, "big") + bytes(156))
        stream.sent += 1
        await asyncio.sleep(1 / PPS)


async def _drain(conn: Connection, stream: _Stream) -> None:
    loop = asyncio.get_running_loop()
    assert stream.received is not None and stream.arrivals is not None
    while True:
        data = await conn.recv_datagram()
        stream.received.add(int.from_bytes(data[:4], "big"))
        stream.arrivals.append(loop.time())


def _place(world: World, name: str, nat: str, n: int) -> Host:
    cfg = profile(nat)
    if cfg is None:
        return world.add_host(name, f"192.0.2.{n}", link=WAN_LINK)
    box = world.add_nat(
        f"nat-{name}", cfg, f"203.0.113.{n}", inside_ip=f"10.0.{n}.1", link=WAN_LINK
    )
    return box.add_host(name, f"10.0.{n}.2", link=LAN_LINK)


async def failover_trial(
    nat_a: str = "apdm-random", nat_b: str = "apdm-random", directory_lag: float = 0.0
) -> dict[str, Any]:
    """One trial (inside a simulator run); see the module docstring."""
    loop = asyncio.get_running_loop()
    world = World()
    directory = LaggyDirectory(directory_lag)
    servers: dict[str, RelayServer] = {}
    for rid, addr, latency in RELAYS:
        host = world.add_host(rid, addr[0], link=Link(latency))
        servers[rid] = await RelayServer.start(
            host, [addr], limits=RelayLimits(shutdown_grace=0.05), fleet=FleetConfig(rid, directory)
        )
    full = RelayMap(RelayInfo(rid, (addr,)) for rid, addr, _ in RELAYS)
    no_r1 = RelayMap(RelayInfo(rid, (addr,)) for rid, addr, _ in RELAYS if rid != "r1")
    cfg = EndpointConfig(direct=False)
    a_host, b_host = _place(world, "alice", nat_a, 1), _place(world, "bob", nat_b, 2)
    alice, bob = (
        Identity.from_private_bytes(b"\x01" * 32),
        Identity.from_private_bytes(b"\x02" * 32),
    )
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        async with (
            Endpoint.bind(alice, relay_map=full, network=a_host, config=cfg) as ea,
            Endpoint.bind(bob, relay_map=no_r1, network=b_host, config=cfg) as eb,
        ):
            accept = asyncio.ensure_future(eb.accept())
            conn = await ea.connect(bob.peer_id, timeout=10)
            inc = await asyncio.wait_for(accept, 10)
            ab, ba = _Stream(), _Stream()
            tasks = [
                loop.create_task(_pump(conn, ab, stop)),
                loop.create_task(_pump(inc, ba, stop)),
                loop.create_task(_drain(inc, ab)),
                loop.create_task(_drain(conn, ba)),
            ]
            # the failure lands anywhere in the probe cycle (seeded)
            await asyncio.sleep(BEFORE + random.uniform(0.0, 0.25))
            current = conn.paths.current
            assert current is not None
            victim: Address = current.remote
            homes = (ea.home_relay, eb.home_relay)
            killed_at = loop.time()
            world.add_drop_rule(lambda src, dst: victim in (src, dst))
            await asyncio.sleep(AFTER)
            stop.set()
            await asyncio.sleep(0.5)  # frames in flight land
            recovery = []
            for s in (ab, ba):
                assert s.arrivals is not None
                after = [t for t in s.arrivals if t > killed_at + 0.05]
                recovery.append(after[0] - killed_at if after else None)
            lost = sum(s.sent - len(s.received or ()) for s in (ab, ba))
            return {
                "recovered": all(r is not None for r in recovery) and not conn.closed,
                "recovery_s": max(r for r in recovery if r is not None) if all(recovery) else None,
                "frames_lost": lost,
                "frames_sent": ab.sent + ba.sent,
                "same_connection": not conn.closed and not inc.closed,
                "homes_before": homes,
                "homes_after": (ea.home_relay, eb.home_relay),
                "paths_after": (str(conn.paths.current), str(inc.paths.current)),
                "victim": f"{victim[0]}:{victim[1]}",
            }
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for srv in servers.values():
            await srv.close()


def run_failover_trial(seed: int, **kw: Any) -> dict[str, Any]:
    """One deterministic trial in its own simulator run."""
    return run(failover_trial(**kw), seed=seed)
