"""Dialling: outgoing connections, started through a relay, and the relay failover of a dial.

A dial goes through the first relay we are registered with. If that relay answers "unknown
destination" (a NOTICE: the peer is not registered there), the dial moves to the next relay not
tried yet, and fails with :class:`PeerUnreachable` naming every relay tried once none is left.
Kept apart from accepting (:mod:`.admission`): the two share nothing but the connection
factory.

With ``config.pipeline_registration`` the first relay may still be registering (its
``RelayRegister`` sent, the answer not in): the dial goes through it at once (issue 17), and
fails with :class:`NoRelay` the moment the relay refuses or fails to register us.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from punchthrough.endpoint.config import EndpointConfig
from punchthrough.endpoint.connection import Connection
from punchthrough.endpoint.errors import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    EndpointClosed,
    NoRelay,
    PeerUnreachable,
)
from punchthrough.endpoint.relaymap import parse_peer_address
from punchthrough.endpoint.relays import RelaySet
from punchthrough.identity import PeerId
from punchthrough.netio import Address
from punchthrough.relay import NOTICE_RATE_LIMITED, NOTICE_UNKNOWN_DESTINATION, RelayClient
from punchthrough.transport.path import Path

#: A relay fleet's choice of relay for a call: ``(peer, relay id hint) -> relay address``.
Resolver = Callable[[PeerId, str | None], Awaitable[Address]]


class Dialer:
    """Outgoing connections in progress, and which relays each has tried."""

    def __init__(
        self,
        relays: RelaySet,
        config: EndpointConfig,
        stats: Counter[str],
        *,
        new_connection: Callable[[PeerId], Connection],
        is_closed: Callable[[], bool],
    ) -> None:
        self._relays = relays
        self._config = config
        self._stats = stats
        self._new_connection = new_connection
        self._is_closed = is_closed
        self._dialing: dict[PeerId, set[Connection]] = {}
        self._tried: dict[Connection, set[Address]] = {}
        #: Set by a relay fleet (``endpoint.fleet``): where to call a peer, and what to do
        #: when a relay says a peer of a live call is not there any more.
        self.resolve: Resolver | None = None
        self.peer_moved: Callable[[Address, PeerId], None] | None = None

    async def connect(self, peer_id: PeerId | str, timeout: float | None) -> Connection:
        """See :meth:`Endpoint.connect`."""
        if self._is_closed():
            raise EndpointClosed("endpoint is closed")
        hint: str | None = None
        if isinstance(peer_id, PeerId):
            peer = peer_id
        else:
            peer, hint = parse_peer_address(peer_id)  # "pt1...@relay-id": a home-relay hint
        timeout = self._config.connect_timeout if timeout is None else timeout
        if self.resolve is not None:
            try:
                async with asyncio.timeout(timeout):
                    relay: Address | None = await self.resolve(peer, hint)
            except TimeoutError:
                raise ConnectTimeout(f"no relay for {peer.short} within {timeout:g} s") from None
        else:
            dialable = self._relays.dialable()
            relay = dialable[0] if dialable else None
        if relay is None:
            raise NoRelay("not registered with any relay" if self._relays.specs else "no relays")
        conn = self._new_connection(peer)
        conn.paths.add(Path.relay(relay), self._relays.sender(relay, peer))
        self._tried[conn] = {relay}
        self._dialing.setdefault(peer, set()).add(conn)
        registering = self._relays.pending.get(relay)
        try:
            conn._start_client()
            async with asyncio.timeout(timeout):
                if registering is None:
                    await conn._wait_ready()
                else:
                    await _ready_unless_refused(conn, relay, registering)
        except TimeoutError:
            conn.abort()
            raise ConnectTimeout(
                f"no usable connection to {peer.short} within {timeout:g} s "
                "(peer offline or not accepting?)"
            ) from None
        except ConnectionClosed as exc:
            conn.abort()
            if self._is_closed():
                raise EndpointClosed("endpoint closed while connecting") from None
            raise ConnectError(str(exc)) from None
        except BaseException:
            conn.abort()
            raise
        finally:
            dialing = self._dialing.get(peer)
            if dialing is not None:
                dialing.discard(conn)
                if not dialing:
                    del self._dialing[peer]
        self._stats["connected"] += 1
        return conn

    def forget(self, conn: Connection) -> None:
        """``conn`` closed."""
        self._tried.pop(conn, None)

    def relay_notice(self, relay: Address, code: int, peer: PeerId) -> None:
        """A relay NOTICE about ``peer``: "unknown destination" moves our dials to ``peer``
        that go through that relay onto the next relay not tried yet."""
        if code == NOTICE_RATE_LIMITED:
            self._stats["relay_rate_limited"] += 1
            return
        if code != NOTICE_UNKNOWN_DESTINATION:
            self._stats["relay_notice_unknown"] += 1
            return
        self._stats["relay_unknown_destination"] += 1
        if self.peer_moved is not None and peer not in self._dialing:
            self.peer_moved(relay, peer)  # a live call's peer left that relay (fleet)
            return
        for conn in list(self._dialing.get(peer, ())):
            current = conn.paths.current
            if current is None or current != Path.relay(relay):
                continue
            tried = self._tried.setdefault(conn, {relay})
            tried.add(relay)
            untried = [a for a in self._relays.clients if a not in tried]
            if untried:
                nxt = untried[0]
                tried.add(nxt)
                conn.paths.add(Path.relay(nxt), self._relays.sender(nxt, peer), make_current=True)
                conn.paths.remove(Path.relay(relay), "peer not registered there")
            else:
                conn._unreachable(
                    PeerUnreachable(
                        f"peer {peer} is not registered with "
                        + ", ".join(f"{a[0]}:{a[1]}" for a in sorted(tried))
                    )
                )


async def _ready_unless_refused(conn: Connection, relay: Address, client: RelayClient) -> None:
    """``conn`` ready, dialled through ``relay`` while ``client`` registers there: raise
    :class:`NoRelay` as soon as that registration fails (nothing would ever be forwarded)."""
    ready = asyncio.ensure_future(conn._wait_ready())
    registered = asyncio.ensure_future(client.wait_registered())
    try:
        await asyncio.wait((ready, registered), return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            exc = registered.exception()
            if exc is not None:
                raise NoRelay(f"no relay registered us: {relay[0]}:{relay[1]}: {exc}")
        await ready
    finally:
        for task in (ready, registered):
            task.cancel()
        await asyncio.gather(ready, registered, return_exceptions=True)
