"""The relay's fast path (relay.fastpath) against the ordinary one, on loopback: the same
frames arrive, the same counters count them, and everything unusual still takes the ordinary
path (forged tokens, unknown destinations, rate limits, a registration that moved)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from punchthrough.identity import Identity, PeerId
from punchthrough.netio import UdpNetwork, mmsg
from punchthrough.netio.batched import BatchedUdpSocket
from punchthrough.relay import (
    NOTICE_RATE_LIMITED,
    NOTICE_UNKNOWN_DESTINATION,
    RelayClient,
    RelayLimits,
    RelayServer,
    encode_send,
)
from punchthrough.transport import DatagramMux

NET = UdpNetwork()
#: Frames each way in the exchange test: several batches (netio.mmsg.BATCH = 64).
FRAMES = 300
MODES = [
    pytest.param("batched", marks=pytest.mark.skipif(not mmsg.available(), reason="Linux only")),
    "portable",
    "ordinary",
]


@pytest.fixture
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    if name == "portable":
        monkeypatch.setattr(mmsg, "_LIBC", None)  # what a platform without recvmmsg sees
    return name


class Client:
    def __init__(self, rc: RelayClient, sock: object, mux: DatagramMux, ident: Identity) -> None:
        self.rc = rc
        self.identity = ident
        self.sock = sock
        self.mux = mux
        self.inbox: asyncio.Queue[tuple[PeerId, bytes]] = asyncio.Queue()
        self.notices: list[tuple[int, PeerId]] = []
        rc.set_receiver(lambda src, data: self.inbox.put_nowait((src, data)))
        rc.set_notice_handler(lambda code, pid: self.notices.append((code, pid)))


async def _relay(mode: str, limits: RelayLimits) -> RelayServer:
    server = await RelayServer.start(
        NET, [("127.0.0.1", 0)], limits=limits, fast_path=mode != "ordinary"
    )
    sock = server._sockets[server.addresses[0]]
    assert isinstance(sock, BatchedUdpSocket) is (mode != "ordinary")
    if isinstance(sock, BatchedUdpSocket):
        assert sock.batched is (mode == "batched")
    return server


async def _clients(server: RelayServer, n: int) -> AsyncIterator[Client]:
    for _ in range(n):
        sock = await NET.bind("127.0.0.1")
        mux = DatagramMux(sock)
        ident = Identity.generate()
        rc = await RelayClient.connect(mux, server.addresses[0], ident, timeout=5)
        yield Client(rc, sock, mux, ident)


async def _close(server: RelayServer, clients: list[Client]) -> None:
    for c in clients:
        await c.rc.close()
        c.mux.close()
        c.sock.close()  # type: ignore[attr-defined]
    await server.close()


async def _drain(c: Client, n: int) -> list[bytes]:
    async with asyncio.timeout(5):
        return [(await c.inbox.get())[1] for _ in range(n)]


@pytest.mark.parametrize("mode", MODES, indirect=True)
async def test_frames_both_ways_arrive_in_order_and_are_counted(mode: str) -> None:
    server = await _relay(mode, RelayLimits(shutdown_grace=0.05))
    clients = [c async for c in _clients(server, 2)]
    a, b = clients
    try:
        for i in range(FRAMES):
            a.rc.send(b.rc.peer_id, i.to_bytes(2, "big") * 80)
            b.rc.send(a.rc.peer_id, i.to_bytes(2, "big"))
            if i % 20 == 19:  # paced: a burst past a client's socket buffer is lost there
                await asyncio.sleep(0.002)
        got_b, got_a = await _drain(b, FRAMES), await _drain(a, FRAMES)
        assert got_b == [i.to_bytes(2, "big") * 80 for i in range(FRAMES)]
        assert got_a == [i.to_bytes(2, "big") for i in range(FRAMES)]
        stats = server.stats
        assert stats["frames_in"] == stats["frames_out"] == 2 * FRAMES
        assert stats["bytes_in"] == stats["bytes_out"] == FRAMES * 160 + FRAMES * 2
        per = {p.peer_id: p.stats for p in server.peers()}
        assert per[a.rc.peer_id]["frames_in"] == per[a.rc.peer_id]["frames_out"] == FRAMES
        assert per[a.rc.peer_id]["bytes_in"] == FRAMES * 160
        assert per[b.rc.peer_id]["bytes_out"] == FRAMES * 160
        fast = sum(f.frames for f in server._fast)
        assert fast == (0 if mode == "ordinary" else 2 * FRAMES)
    finally:
        await _close(server, clients)


@pytest.mark.parametrize("mode", MODES, indirect=True)
async def test_the_unusual_takes_the_ordinary_path(mode: str) -> None:
    """Forged token, unknown destination, over the rate limit: dropped, counted and answered
    exactly as the ordinary path does, whichever path saw them first."""
    limits = RelayLimits(shutdown_grace=0.05, packets_per_second=0.001, packet_burst=5)
    server = await _relay(mode, limits)
    clients = [c async for c in _clients(server, 2)]
    a, b = clients
    try:
        relay = server.addresses[0]
        for i in range(20):  # from a's own socket, with a wrong token
            a.sock.sendto(encode_send(b.rc.peer_id, i.to_bytes(8, "big"), b"forged"), relay)  # type: ignore[attr-defined]
        nobody = Identity.generate().peer_id
        a.rc.send(nobody, b"anyone?")
        for i in range(10):  # 4 more within the burst of 5, then over it
            a.rc.send(b.rc.peer_id, b"real %d" % i)
        got = await _drain(b, 4)
        assert got == [b"real %d" % i for i in range(4)]
        async with asyncio.timeout(2):
            while len(a.notices) < 2:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert b.inbox.empty()
        stats = server.stats
        assert stats["dropped_bad_token"] == 20
        assert stats["dropped_unknown_dest"] == 1
        assert stats["dropped_rate"] == 6
        assert stats["frames_out"] == 4
        assert {code for code, _ in a.notices} == {NOTICE_UNKNOWN_DESTINATION, NOTICE_RATE_LIMITED}
    finally:
        await _close(server, clients)


@pytest.mark.parametrize("mode", MODES, indirect=True)
async def test_a_registration_that_moved_is_followed(mode: str) -> None:
    """The fast path caches sources and destinations; a re-registration from a new address
    (a NAT rebinding) must reach the new address, never the old one."""
    server = await _relay(mode, RelayLimits(shutdown_grace=0.05))
    clients = [c async for c in _clients(server, 2)]
    try:
        a, b_old = clients
        for i in range(5):
            a.rc.send(b_old.rc.peer_id, b"before %d" % i)
        assert await _drain(b_old, 5) == [b"before %d" % i for i in range(5)]
        sock = await NET.bind("127.0.0.1")
        mux = DatagramMux(sock)
        rc = await RelayClient.connect(mux, server.addresses[0], b_old.identity, timeout=5)
        b_new = Client(rc, sock, mux, b_old.identity)
        clients.append(b_new)
        for i in range(5):
            a.rc.send(rc.peer_id, b"after %d" % i)
        assert await _drain(b_new, 5) == [b"after %d" % i for i in range(5)]
        assert b_old.inbox.empty()
    finally:
        await _close(server, clients)
