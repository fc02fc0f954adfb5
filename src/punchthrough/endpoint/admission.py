"""Admission: incoming connections, from a relayed Initial to :meth:`Endpoint.accept`.

An Initial nobody owns (the router's call) starts an acceptor connection at once, but memory
is bounded: half-open connections cost ~90 KiB each, so at most ``config.accept_backlog`` are
in progress (QUIC retransmits a dropped Initial). Once the handshake proved the caller's peer
id, the policy decides (:meth:`Admission.admit`: backlog of unaccepted connections, then the
application's ``allow`` callback); admitted connections wait in a queue for ``accept()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable

from punchthrough.endpoint.config import EndpointConfig
from punchthrough.endpoint.connection import Connection
from punchthrough.endpoint.errors import ConnectError, ConnectionClosed, EndpointClosed
from punchthrough.endpoint.peerauth import AllowCallback, call_allow
from punchthrough.identity import PeerId
from punchthrough.netio import Address
from punchthrough.transport.path import Path

log = logging.getLogger(__name__)


class Admission:
    """Incoming connections in progress and those waiting for ``accept()``."""

    def __init__(
        self,
        config: EndpointConfig,
        stats: Counter[str],
        allow: AllowCallback | None,
        *,
        new_connection: Callable[[PeerId], Connection],
        relay_sender: Callable[[Address, PeerId], Callable[[bytes], None]],
        is_closed: Callable[[], bool],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._config = config
        self._stats = stats
        self._allow = allow
        self._new_connection = new_connection
        self._relay_sender = relay_sender
        self._is_closed = is_closed
        self._accepted: deque[Connection] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._pending = 0

    def incoming(self, relay: Address, src: PeerId, initial: bytes) -> None:
        """A relayed Initial from ``src`` that no connection owns: start an acceptor."""
        if self._is_closed():
            self._stats["dropped_closing"] += 1
            return
        if self._pending >= self._config.accept_backlog:
            # Half-open connections cost ~90 KiB each: bound them (a flood of Initials from
            # a registered peer must not exhaust memory); QUIC retransmits the Initial.
            self._stats["dropped_incoming_backlog"] += 1
            return
        conn = self._new_connection(src)
        path = Path.relay(relay)
        conn.paths.add(path, self._relay_sender(relay, src))
        conn._start_server(initial, path)
        self._stats["incoming"] += 1
        self._pending += 1
        self._loop.create_task(self._admit_when_ready(conn))

    async def _admit_when_ready(self, conn: Connection) -> None:
        try:
            await conn._wait_ready()
        except (ConnectError, ConnectionClosed) as exc:
            log.info("incoming connection from %s failed: %s", conn.peer_id.short, exc)
            self._stats["incoming_failed"] += 1
            return
        finally:
            self._pending -= 1
        if self._is_closed() or conn.closed:
            return
        self._stats["accepted"] += 1
        self._accepted.append(conn)
        self.wake()

    async def admit(self, peer_id: PeerId) -> str | None:
        """Acceptor policy: None admits; a string is the refusal reason sent to the dialer."""
        if self._is_closed():
            return "endpoint closing"
        if len(self._accepted) >= self._config.accept_backlog:
            self._stats["refused_busy"] += 1
            return "busy"
        if self._allow is not None and not await call_allow(self._allow, peer_id):
            self._stats["refused_allow"] += 1
            return "refused"
        return None

    async def accept(self) -> Connection:
        """See :meth:`Endpoint.accept`."""
        while not self._accepted:
            if self._is_closed():
                raise EndpointClosed("endpoint is closed")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._accepted.popleft()

    def wake(self) -> None:
        """Wake a waiting ``accept()`` (a connection was admitted, or the endpoint closes)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def forget(self, conn: Connection) -> None:
        """``conn`` closed: no longer offered to ``accept()``."""
        with contextlib.suppress(ValueError):
            self._accepted.remove(conn)
