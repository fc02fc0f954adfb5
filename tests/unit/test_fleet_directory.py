"""The fleet directory (peer id -> home relay, TTL): in memory and in a REAL redis-server, and
relays sharing it (lookups across relays; Redis down: local peers served, remote lookups fail
fast with a typed reason)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from punchthrough.identity import Identity
from punchthrough.lab.redis import RedisServer, redis_available
from punchthrough.netio import UdpNetwork
from punchthrough.relay import RelayClient, RelayLimits, RelayLookupRefused, RelayServer
from punchthrough.relay.directory import (
    Directory,
    DirectoryUnavailable,
    HomeEntry,
    MemoryDirectory,
    open_directory,
)
from punchthrough.relay.directory.redis import RedisDirectory, key_for
from punchthrough.relay.fleet import FleetConfig
from punchthrough.signal import RELAY_UNAVAILABLE
from punchthrough.transport.demux import DatagramMux

needs_redis = pytest.mark.skipif(not redis_available(), reason="redis-server not installed")
NET = UdpNetwork()
HOST = "127.0.0.1"
ENTRY_A = HomeEntry("relay-a", (("198.51.100.1", 3478),))
ENTRY_B = HomeEntry("relay-b", (("198.51.100.2", 3478), ("2001:db8::2", 3478)))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if not redis_available():
        pytest.skip("redis-server not installed")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def directory(request: pytest.FixtureRequest) -> AsyncIterator[Directory]:
    if request.param == "memory":
        yield MemoryDirectory()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    d = RedisDirectory.from_url(server.url)
    try:
        yield d
    finally:
        await d.close()


async def test_publish_lookup_withdraw_only_by_the_owner(directory: Directory) -> None:
    p, q = Identity.generate().peer_id, Identity.generate().peer_id
    assert await directory.lookup(p) is None
    await directory.publish({p: ENTRY_A, q: ENTRY_B}, ttl=30)
    assert await directory.lookup(p) == ENTRY_A
    assert await directory.lookup(q) == ENTRY_B  # IPv6 addresses survive the round trip
    # p re-homed to relay-b: relay-a forgetting its old registration must not delete it
    await directory.publish({p: ENTRY_B}, ttl=30)
    assert not await directory.withdraw(p, "relay-a")
    assert await directory.lookup(p) == ENTRY_B
    assert await directory.withdraw(p, "relay-b")
    assert await directory.lookup(p) is None


async def test_memory_entries_expire_after_ttl() -> None:
    clock = FakeClock()
    d = MemoryDirectory(clock)
    p = Identity.generate().peer_id
    await d.publish({p: ENTRY_A}, ttl=30)
    clock.now += 29.9
    assert await d.lookup(p) == ENTRY_A
    await d.publish({p: ENTRY_A}, ttl=30)  # a refresh moves the expiry
    clock.now += 29.9
    assert await d.lookup(p) == ENTRY_A
    clock.now += 0.2
    assert await d.lookup(p) is None


@needs_redis
async def test_redis_entries_expire_after_ttl(redis_server: RedisServer) -> None:
    d = RedisDirectory.from_url(redis_server.url)
    try:
        p = Identity.generate().peer_id
        await d.publish({p: ENTRY_A}, ttl=0.2)
        assert await d.lookup(p) == ENTRY_A
        await asyncio.sleep(0.4)
        assert await d.lookup(p) is None
        # a value that is not ours is a miss, counted, never an exception
        await d._redis.set(key_for(p), b"not json")
        assert await d.lookup(p) is None and d.stats["bad_values"] == 1
    finally:
        await d.close()


@needs_redis
async def test_redis_down_fails_fast_with_a_typed_reason(redis_server: RedisServer) -> None:
    d = RedisDirectory.from_url(redis_server.url)
    try:
        p = Identity.generate().peer_id
        await d.publish({p: ENTRY_A}, ttl=30)
        redis_server.kill()
        loop = asyncio.get_running_loop()
        for op in (d.lookup(p), d.publish({p: ENTRY_A}, 30), d.withdraw(p, "relay-a")):
            start = loop.time()
            with pytest.raises(DirectoryUnavailable, match=r"redis://127\.0\.0\.1"):
                await op
            assert loop.time() - start < 1.0
    finally:
        await d.close()


async def test_redis_unreachable_address_fails_within_timeout() -> None:
    # nothing listens there: connection refused, at once
    d = open_directory("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(DirectoryUnavailable):
            await d.lookup(Identity.generate().peer_id)
    finally:
        await d.close()


def test_open_directory_rejects_unknown_schemes() -> None:
    assert isinstance(open_directory(None), MemoryDirectory)
    with pytest.raises(ValueError, match="redis://"):
        open_directory("etcd://x")


# -- relays sharing a directory ----------------------------------------------------------------
async def _client(relay: RelayServer) -> tuple[RelayClient, DatagramMux]:
    sock = await NET.bind(HOST, 0)
    mux = DatagramMux(sock)
    client = await RelayClient.connect(mux, relay.addresses[0], Identity.generate(), timeout=5)
    return client, mux


async def _fleet(directory: Directory) -> tuple[RelayServer, RelayServer]:
    limits = RelayLimits(shutdown_grace=0.05)
    r1 = await RelayServer.start(
        NET, [(HOST, 0)], limits=limits, fleet=FleetConfig("r1", directory)
    )
    r2 = await RelayServer.start(
        NET, [(HOST, 0)], limits=limits, fleet=FleetConfig("r2", directory)
    )
    return r1, r2


async def test_relays_answer_lookups_for_each_others_clients(directory: Directory) -> None:
    r1, r2 = await _fleet(directory)
    muxes: list[DatagramMux] = []
    try:
        a, ma = await _client(r1)
        b, mb = await _client(r2)
        muxes += [ma, mb]
        assert r2.fleet is not None and r1.fleet is not None
        await r2.fleet.flush()
        assert await a.lookup(b.peer_id) == tuple(r2.addresses)  # via the directory
        assert await b.lookup(b.peer_id) == tuple(r2.addresses)  # local
        assert await a.lookup(Identity.generate().peer_id) == ()
        assert r1.stats["directory_lookups"] == 2 and r1.stats["directory_misses"] == 1
        # b leaves r2: r2 withdraws it, a's lookup finds nothing
        await b.close()
        for _ in range(200):
            if r2.stats["clients"] == 0:
                break
            await asyncio.sleep(0.01)
        await r2.fleet.flush()
        assert await a.lookup(b.peer_id) == ()
        await a.close()
    finally:
        await r1.close()
        await r2.close()
        for m in muxes:
            m.close()
            m.sock.close()


@needs_redis
async def test_redis_down_local_peers_served_remote_lookup_fails_fast(
    redis_server: RedisServer,
) -> None:
    directory = RedisDirectory.from_url(redis_server.url)
    r1, r2 = await _fleet(directory)
    muxes: list[DatagramMux] = []
    try:
        a, ma = await _client(r1)
        a2, ma2 = await _client(r1)
        muxes += [ma, ma2]
        redis_server.kill()
        b, mb = await _client(r2)  # registering does not need the directory
        muxes.append(mb)
        assert await a.lookup(a2.peer_id) == tuple(r1.addresses)  # local: unaffected
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RelayLookupRefused) as info:
            await a.lookup(b.peer_id)
        assert loop.time() - start < 1.0
        assert info.value.code == RELAY_UNAVAILABLE and "directory unavailable" in str(info.value)
        assert r1.stats["directory_errors"] == 1
        # and relayed frames between r1's own clients still flow
        got: asyncio.Future[bytes] = loop.create_future()
        a2.set_receiver(lambda src, data: got.done() or got.set_result(data))
        a.send(a2.peer_id, b"\x40hello")
        assert await asyncio.wait_for(got, 2) == b"\x40hello"
        for c in (a, a2, b):
            await c.close()
    finally:
        await r1.close()
        await r2.close()
        await directory.close()
        for m in muxes:
            m.close()
            m.sock.close()
