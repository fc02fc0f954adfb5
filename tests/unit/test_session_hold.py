"""What a peer sends before it is authenticated (issue 17): held, bounded, the application's only
once the peer is proven, dropped otherwise.

Driven through the session's event handler directly: in a real call aioquic's pacing decides how
many of the dialer's first datagrams beat the acceptor's check of its proof, so only here is the
bound exercised exactly.
"""

from __future__ import annotations

import asyncio

from aioquic.quic.events import DatagramFrameReceived

from punchthrough.endpoint import ConnectionClosed, EndpointConfig
from punchthrough.endpoint.session import HELD_DATAGRAMS, PeerSession
from punchthrough.identity import Identity


class _NoCids:
    def add_quic_cid(self, cid: bytes, handler: object) -> None:
        pass

    def remove_quic_cid(self, cid: bytes) -> None:
        pass


def _session() -> PeerSession:
    return PeerSession(
        identity=Identity.generate(),
        is_client=False,
        config=EndpointConfig(),
        cids=_NoCids(),  # type: ignore[arg-type]
        on_closed=lambda: None,
    )


def _frames(n: int) -> list[bytes]:
    return [i.to_bytes(2, "big") for i in range(n)]


async def test_held_until_proven_then_delivered_in_order_and_bounded() -> None:
    s = _session()
    extra = 5
    for data in _frames(HELD_DATAGRAMS + extra):
        s._on_event(DatagramFrameReceived(data=data))
    assert len(s._datagrams) == 0  # nothing for the application yet
    assert s._stats["datagrams_dropped_before_auth"] == extra
    s.established_at = asyncio.get_running_loop().time()
    s._release_held()
    got = [await s.recv_datagram() for _ in range(HELD_DATAGRAMS)]
    assert got == _frames(HELD_DATAGRAMS)
    assert s._stats["datagrams_held_before_auth"] == HELD_DATAGRAMS
    s._on_event(DatagramFrameReceived(data=b"later"))  # once proven: straight through
    assert await s.recv_datagram() == b"later"
    s.abort()


async def test_never_proven_nothing_delivered() -> None:
    s = _session()
    for data in _frames(3):
        s._on_event(DatagramFrameReceived(data=data))
    s.abort()  # the proof failed: the connection is closed
    assert s._held_datagrams == [] and s._held_streams == []
    try:
        got: bytes | None = await asyncio.wait_for(s.recv_datagram(), 1.0)
    except ConnectionClosed:
        got = None
    assert got is None
