"""The relay in the simulator: clients behind RFC 4787 NATs, virtual time (no real sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from punchthrough.identity import Identity, PeerId
from punchthrough.netio import Address
from punchthrough.relay import RelayClient, RelayLimits, RelayServer
from punchthrough.sim import World, nat_config, run
from punchthrough.stun import StunClient
from punchthrough.transport import DatagramMux

pytestmark = pytest.mark.sim

T = TypeVar("T")
RELAY_IP, ALT_IP = "198.51.100.20", "198.51.100.21"
RELAY: Address = (RELAY_IP, 3478)


def sim(fn: Callable[[World], Awaitable[T]], seed: int = 0) -> T:
    async def main() -> T:
        return await fn(World(seed))

    return run(main(), seed=seed)


class SimPeer:
    def __init__(self, mux: DatagramMux, client: RelayClient) -> None:
        self.mux = mux
        self.client = client
        self.inbox: list[tuple[PeerId, bytes]] = []
        client.set_receiver(lambda src, data: self.inbox.append((src, data)))

    async def close(self) -> None:
        await self.client.close()
        self.mux.close()
        self.mux.sock.close()


async def peer_behind(world: World, name: str, profile: str, wan_ip: str, **kw: object) -> SimPeer:
    nat = world.add_nat(f"{name}-nat", nat_config(profile, **kw), wan_ip)
    host = nat.add_host(name, "10.0.1.2")
    sock = await host.bind()
    mux = DatagramMux(sock)
    client = await RelayClient.connect(mux, RELAY, Identity.generate(), timeout=5)
    return SimPeer(mux, client)


async def start_relay(world: World, limits: RelayLimits | None = None) -> RelayServer:
    host = world.add_host("relay", RELAY_IP, ALT_IP)
    return await RelayServer.start(host, [RELAY], alt_ip=ALT_IP, limits=limits)


def test_clients_behind_hard_nats_register_and_exchange() -> None:
    async def go(w: World) -> None:
        server = await start_relay(w)
        a = await peer_behind(w, "alice", "apdm-random", "203.0.113.1")
        b = await peer_behind(w, "bob", "eim-apdf", "203.0.113.2")
        try:
            assert a.client.observed_address[0] == "203.0.113.1"
            assert b.client.observed_address[0] == "203.0.113.2"
            for i in range(20):
                a.client.send(b.client.peer_id, b"a%d" % i)
                b.client.send(a.client.peer_id, b"b%d" % i)
            await asyncio.sleep(0.5)
            assert b.inbox == [(a.client.peer_id, b"a%d" % i) for i in range(20)]
            assert a.inbox == [(b.client.peer_id, b"b%d" % i) for i in range(20)]
            # the registered address is the NAT mapping of the very socket that sends DATA
            by_id = {p.peer_id: p.address for p in server.peers()}
            assert by_id[a.client.peer_id] == a.client.observed_address
            # STUN on the relay port, RFC 5780, from behind the NAT through the shared socket
            stun = StunClient(a.mux.sock)
            a.mux.add_stun_handler(stun.handle_datagram)
            res = await stun.binding(RELAY)
            assert res.mapped == a.client.observed_address
            assert res.other_address == (ALT_IP, 3479)
            stun.close()
        finally:
            await a.close()
            await b.close()
            await server.close()
        assert server.stats["connections"] == 0

    sim(go)


def test_vanished_client_forgotten_after_idle_timeout_in_virtual_time() -> None:
    async def go(w: World) -> None:
        server = await start_relay(w, RelayLimits(idle_timeout=30.0))
        a = await peer_behind(w, "alice", "eim-apdf", "203.0.113.1")
        ghost = await peer_behind(w, "ghost", "eim-apdf", "203.0.113.2")
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            ghost.mux.sock.close()  # the host vanishes: no CONNECTION_CLOSE, no more PINGs
            while len(server.peers()) == 2:
                await asyncio.sleep(1)
            gone_after = loop.time() - t0
            assert 29 <= gone_after <= 32
            assert [p.peer_id for p in server.peers()] == [a.client.peer_id]
            # alice keeps PINGing every keepalive_ms (10 s): still registered minutes later
            await asyncio.sleep(300)
            assert [p.peer_id for p in server.peers()] == [a.client.peer_id]
            assert not a.client.closed
            assert a.client.stats["keepalives"] >= 30
        finally:
            await a.close()
            await ghost.client.close()
            ghost.mux.close()
            await server.close()

    sim(go)


def test_nat_rebinding_moves_the_registration() -> None:
    """The NAT forgets the binding between keepalives; the next PING leaves from a new port,
    the relay validates the migrated path and moves the registration there."""

    async def go(w: World) -> None:
        server = await start_relay(w, RelayLimits(idle_timeout=30.0))
        a = await peer_behind(
            w, "alice", "apdm-random", "203.0.113.1", binding_lifetime=4.0, unreplied_lifetime=4.0
        )
        b = await peer_behind(w, "bob", "eim-apdf", "203.0.113.2")
        try:
            before = next(p.address for p in server.peers() if p.peer_id == a.client.peer_id)
            await asyncio.sleep(12)  # a keepalive after the binding expired
            after = next(p.address for p in server.peers() if p.peer_id == a.client.peer_id)
            assert after != before and after[0] == "203.0.113.1"
            assert server.stats["registrations_moved"] == 1
            a.client.send(b.client.peer_id, b"from the new mapping")
            await asyncio.sleep(0.2)
            assert b.inbox == [(a.client.peer_id, b"from the new mapping")]
        finally:
            await a.close()
            await b.close()
            await server.close()

    sim(go)
