"""A relay fleet on loopback: three in-process relays sharing one directory; endpoints homed
by RTT call each other by peer id alone, with a home-relay hint, and keep their call (the same
QUIC connection) when the relay carrying it drains."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from punchthrough.endpoint import Endpoint, EndpointConfig, PeerLookupFailed, PeerUnreachable
from punchthrough.endpoint.relaymap import RelayInfo, RelayMap
from punchthrough.identity import Identity
from punchthrough.netio import UdpNetwork
from punchthrough.relay import RelayCloseCode, RelayLimits, RelayServer
from punchthrough.relay.directory import MemoryDirectory
from punchthrough.relay.fleet import FleetConfig
from punchthrough.transport.path import Path

NET = UdpNetwork()
HOST = "127.0.0.1"
RELAY_ONLY = EndpointConfig(direct=False)


@contextlib.asynccontextmanager
async def fleet(n: int = 3) -> AsyncIterator[tuple[list[RelayServer], MemoryDirectory]]:
    directory = MemoryDirectory()
    servers: list[RelayServer] = []
    try:
        for i in range(n):
            servers.append(
                await RelayServer.start(
                    NET,
                    [(HOST, 0)],
                    limits=RelayLimits(shutdown_grace=0.05),
                    fleet=FleetConfig(f"r{i + 1}", directory),
                )
            )
        yield servers, directory
    finally:
        for s in servers:
            await s.close()


def relay_map(servers: list[RelayServer], skip: str | None = None) -> RelayMap:
    return RelayMap(
        RelayInfo(f"r{i + 1}", (s.addresses[0],), s.peer_id)
        for i, s in enumerate(servers)
        if f"r{i + 1}" != skip
    )


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_peers_on_different_home_relays_call_by_peer_id_alone() -> None:
    async with fleet() as (servers, directory):
        a, b = Identity.generate(), Identity.generate()
        async with Endpoint.bind(a, relay_map=relay_map(servers), config=RELAY_ONLY) as ea:
            home_a = ea.home_relay
            assert home_a in {"r1", "r2", "r3"} and len(ea.relays) == 1
            mb = relay_map(servers, skip=home_a)  # b cannot pick a's home
            async with Endpoint.bind(b, relay_map=mb, config=RELAY_ONLY, host=HOST) as eb:
                assert eb.home_relay not in (None, home_a)
                assert eb.address == f"{b.peer_id}@{eb.home_relay}"
                await wait_until(lambda: len(directory) == 2)
                for caller, callee, target in ((ea, eb, b), (eb, ea, a)):
                    accept = asyncio.ensure_future(callee.accept())
                    conn = await caller.connect(str(target.peer_id), timeout=5)
                    inc = await asyncio.wait_for(accept, 5)
                    # through the callee's home relay, where the caller is a visitor
                    assert conn.paths.current == Path.relay(callee.fleet.home_address)  # type: ignore[union-attr]
                    conn.send_datagram(b"ping")
                    assert await asyncio.wait_for(inc.recv_datagram(), 5) == b"ping"
                    await conn.close()
                # the hint skips the lookup
                accept = asyncio.ensure_future(eb.accept())
                await ea.connect(eb.address, timeout=5)
                await asyncio.wait_for(accept, 5)
                assert ea.stats["lookups_skipped_hint"] == 1
                # nobody, and a hint naming a relay we do not know
                with pytest.raises(PeerUnreachable, match="not registered with any relay"):
                    await ea.connect(Identity.generate().peer_id, timeout=5)
                with pytest.raises(PeerUnreachable, match="not in our map"):
                    await ea.connect(f"{b.peer_id}@nowhere", timeout=5)
                # a visit is not a home: the directory still names b's home
                entry = await directory.lookup(a.peer_id)
                assert entry is not None and entry.relay_id == home_a


async def test_relays_with_ids_make_a_fleet_homed_on_the_nearest() -> None:
    async with fleet(2) as (servers, _directory):
        specs = [f"r{i + 1}={s.addresses[0][0]}:{s.addresses[0][1]}" for i, s in enumerate(servers)]
        async with Endpoint.bind(Identity.generate(), relays=specs, host=HOST) as ep:
            assert ep.fleet is not None and ep.home_relay in ("r1", "r2")
            assert len(ep.relays) == 1  # registered with the home only
            rtt = {r: h.srtt for r, h in ep.fleet.policy.health.items()}
            assert all(v is not None for v in rtt.values())  # both were measured


async def test_directory_down_cross_relay_call_fails_fast_with_the_reason() -> None:
    async with fleet(2) as (servers, directory):
        a, b = Identity.generate(), Identity.generate()
        m1, m2 = relay_map(servers, skip="r2"), relay_map(servers, skip="r1")
        async with (
            Endpoint.bind(a, relay_map=m1, config=RELAY_ONLY, host=HOST) as ea,
            Endpoint.bind(b, relay_map=m2, config=RELAY_ONLY, host=HOST) as eb,
            Endpoint.bind(Identity.generate(), relay_map=m1, config=RELAY_ONLY, host=HOST) as ec,
        ):
            directory.available = False
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(PeerLookupFailed, match="directory unavailable") as info:
                await ea.connect(b.peer_id, timeout=5)
            assert info.value.code == 503 and loop.time() - start < 1.0
            # a call between two peers of one relay does not need the directory
            accept = asyncio.ensure_future(ec.accept())
            await ea.connect(ec.peer_id, timeout=5)
            await asyncio.wait_for(accept, 5)
            assert eb.home_relay == "r2"


async def test_drained_relay_call_continues_on_the_same_connection() -> None:
    async with fleet() as (servers, _directory):
        a, b = Identity.generate(), Identity.generate()
        async with Endpoint.bind(a, relay_map=relay_map(servers), config=RELAY_ONLY) as ea:
            mb = relay_map(servers, skip=ea.home_relay)
            async with Endpoint.bind(b, relay_map=mb, config=RELAY_ONLY, host=HOST) as eb:
                accept = asyncio.ensure_future(eb.accept())
                conn = await ea.connect(b.peer_id, timeout=5)
                inc = await asyncio.wait_for(accept, 5)
                old_home = eb.home_relay
                victim = servers[int(old_home[1:]) - 1]  # type: ignore[index]
                await victim.close(code=RelayCloseCode.DRAINING)
                await wait_until(lambda: eb.home_relay not in (None, old_home))
                await wait_until(lambda: conn.paths.current != Path.relay(victim.addresses[0]))
                await wait_until(lambda: inc.paths.current != Path.relay(victim.addresses[0]))
                for _ in range(3):
                    conn.send_datagram(b"after")
                    inc.send_datagram(b"back")
                assert await asyncio.wait_for(inc.recv_datagram(), 5) == b"after"
                assert await asyncio.wait_for(conn.recv_datagram(), 5) == b"back"
                assert not conn.closed and not inc.closed  # the same QUIC connection
                assert ea.stats["relay_reroutes"] >= 1 and eb.stats["relay_reroutes"] >= 1


async def test_rehome_while_the_old_relay_lives_moves_the_call_by_notice() -> None:
    """The callee moves home with its old relay still up (a policy decision, not a failure):
    it leaves the old relay, the caller's next frames there get "unknown destination", and
    the caller follows (``peer_moved``) under the same connection."""
    async with fleet() as (servers, directory):
        a, b = Identity.generate(), Identity.generate()
        async with Endpoint.bind(a, relay_map=relay_map(servers), config=RELAY_ONLY) as ea:
            mb = relay_map(servers, skip=ea.home_relay)
            async with Endpoint.bind(b, relay_map=mb, config=RELAY_ONLY, host=HOST) as eb:
                accept = asyncio.ensure_future(eb.accept())
                conn = await ea.connect(b.peer_id, timeout=5)
                inc = await asyncio.wait_for(accept, 5)
                assert eb.fleet is not None
                old = eb.home_relay
                old_path = Path.relay(eb.fleet.home_address)  # type: ignore[arg-type]
                eb.fleet.policy.down(old, asyncio.get_running_loop().time())  # type: ignore[arg-type]
                eb.fleet._wake.set()
                await wait_until(lambda: eb.home_relay not in (None, old))
                for _ in range(50):  # a call keeps sending; the NOTICE comes back on a frame
                    conn.send_datagram(b"x")
                    if conn.paths.current != old_path:
                        break
                    await asyncio.sleep(0.02)
                assert conn.paths.current != old_path
                assert ea.stats["relay_unknown_destination"] >= 1
                conn.send_datagram(b"after")
                while (got := await asyncio.wait_for(inc.recv_datagram(), 5)) == b"x":
                    pass
                assert got == b"after" and not conn.closed and not inc.closed
                entry = await directory.lookup(b.peer_id)
                assert (
                    entry is not None and entry.relay_id == eb.home_relay
                )  # the directory follows


async def test_direct_call_is_not_disturbed_when_its_relay_drains() -> None:
    async with fleet() as (servers, _directory):
        a, b = Identity.generate(), Identity.generate()
        async with Endpoint.bind(a, relay_map=relay_map(servers), host=HOST) as ea:
            mb = relay_map(servers, skip=ea.home_relay)
            async with Endpoint.bind(b, relay_map=mb, host=HOST) as eb:
                accept = asyncio.ensure_future(eb.accept())
                conn = await ea.connect(b.peer_id, timeout=5)
                inc = await asyncio.wait_for(accept, 5)
                await wait_until(lambda: conn.path == "direct" and inc.path == "direct")
                changes = len(conn.path_changes)
                victim = servers[int(eb.home_relay[1:]) - 1]  # type: ignore[index]
                drained = asyncio.ensure_future(victim.close(code=RelayCloseCode.DRAINING))
                for i in range(50):  # 1 s at 50 pps across the drain
                    conn.send_datagram(i.to_bytes(2, "big"))
                    await asyncio.sleep(0.02)
                await drained
                got = set()
                while len(got) < 50:
                    got.add(int.from_bytes(await asyncio.wait_for(inc.recv_datagram(), 2), "big"))
                assert conn.path == "direct" and len(conn.path_changes) == changes
                await wait_until(lambda: eb.home_relay != victim_id(servers, victim))
                # the relay fallback of the call moved off the drained relay, in the background
                dead = Path.relay(victim.addresses[0])
                await wait_until(lambda: not conn.paths.has(dead) and not inc.paths.has(dead))


def victim_id(servers: list[RelayServer], victim: RelayServer) -> str:
    return f"r{servers.index(victim) + 1}"


async def test_home_relay_restarting_is_registered_with_again() -> None:
    directory = MemoryDirectory()
    limits = RelayLimits(shutdown_grace=0.05)
    server = await RelayServer.start(
        NET, [(HOST, 0)], limits=limits, fleet=FleetConfig("r1", directory)
    )
    addr = server.addresses[0]
    m = RelayMap([RelayInfo("r1", (addr,))])
    try:
        async with Endpoint.bind(Identity.generate(), relay_map=m, host=HOST) as ep:
            first = ep.relays[addr]
            await server.close()  # a restart: our registration is gone
            await wait_until(lambda: first.closed and addr not in ep.relays)
            server = await RelayServer.start(
                NET, [addr], limits=limits, fleet=FleetConfig("r1", directory)
            )
            await wait_until(lambda: addr in ep.relays and not ep.relays[addr].closed)
            assert ep.home_relay == "r1" and ep.relays[addr] is not first
            await wait_until(lambda: len(directory) == 1)
    finally:
        await server.close()
