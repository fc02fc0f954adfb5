"""Admission: incoming connections, from a relayed Initial to :meth:`Endpoint.accept`.

Nothing is kept for a packet that proved nothing: an Initial nobody owns (the router's call)
starts an acceptor connection only if its packet protection comes off
(:func:`~punchthrough.transport.initial.initial_decrypts`); junk is dropped and counted. Even a
real Initial proves no identity, so the connections in progress are bounded: half-open ones
cost ~90 KiB each, so at most ``config.accept_backlog`` in all, and while their caller is
unauthenticated at most ``pending_per_peer`` per relay-stamped sender id and
``pending_per_relay`` per relay; one still unauthenticated ``pending_timeout`` after its first
Initial gives its slot up as soon as a new Initial wants one (QUIC retransmits a dropped
Initial). The policy (:meth:`Admission.admit`: backlog of unaccepted connections, then the
application's ``allow`` callback) decides at the Initial about the relay-stamped id, so that its
answer goes out as 0.5-RTT data (issue 17); the connection counts as unproven until the caller
proved that id, and only then waits in a queue for ``accept()``. Every drop is a
:class:`Drop` counter in ``stats``, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from punchthrough.endpoint.codes import CLOSE_AUTH_FAILED
from punchthrough.endpoint.config import EndpointConfig
from punchthrough.endpoint.connection import Connection
from punchthrough.endpoint.errors import (
    ConnectError,
    ConnectionClosed,
    EndpointClosed,
    HandshakeFailed,
)
from punchthrough.endpoint.peerauth import Admit, AllowCallback, SetupFailure, call_allow
from punchthrough.identity import PeerId
from punchthrough.netio import Address
from punchthrough.transport.initial import initial_decrypts
from punchthrough.transport.path import Path

log = logging.getLogger(__name__)

K = TypeVar("K")


class Drop(enum.StrEnum):
    """Why an incoming Initial or connection was dropped: its counter in ``Endpoint.stats``."""

    CLOSING = "dropped_closing"
    #: Its packet protection did not come off (junk shaped like an Initial): no state made.
    UNDECRYPTABLE = "dropped_incoming_undecryptable"
    #: ``accept_backlog`` connections already in progress.
    BACKLOG = "dropped_incoming_backlog"
    #: Its sender id already has ``pending_per_peer`` unauthenticated connections.
    PEER_LIMIT = "dropped_incoming_peer_limit"
    #: Its relay already carries ``pending_per_relay`` unauthenticated connections.
    RELAY_LIMIT = "dropped_incoming_relay_limit"
    #: Still unauthenticated ``pending_timeout`` after its first Initial: closed.
    EXPIRED = "dropped_incoming_unauthenticated"


@dataclass(eq=False, slots=True)
class _Pending:
    """One incoming connection in progress, and what it holds until its caller is proven."""

    sender: PeerId
    relay: Address
    started: float
    conn: Connection | None = None
    #: Out of the unauthenticated shares (proven, expired or over).
    unshared: bool = field(default=False)
    #: Still counted in the backlog of connections in progress.
    holds_slot: bool = field(default=True)


def _release(counter: Counter[K], key: K) -> None:
    """One less for ``key``; a key at zero is removed (senders come and go)."""
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class Admission:
    """Incoming connections in progress and those waiting for ``accept()``."""

    def __init__(
        self,
        config: EndpointConfig,
        stats: Counter[str],
        allow: AllowCallback | None,
        *,
        new_connection: Callable[[PeerId, Admit], Connection],
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
        #: Unauthenticated connections in progress, oldest first, and how many per
        #: relay-stamped sender id and per relay.
        self._unproven: dict[_Pending, None] = {}
        self._unproven_by_peer: Counter[PeerId] = Counter()
        self._unproven_by_relay: Counter[Address] = Counter()

    def incoming(self, relay: Address, src: PeerId, initial: bytes) -> None:
        """A relayed Initial from ``src`` that no connection owns: start an acceptor, if it
        decrypts and neither ``src`` nor ``relay`` holds its share of the slots already."""
        drop = self._refusal(relay, src)
        if drop in (Drop.BACKLOG, Drop.PEER_LIMIT, Drop.RELAY_LIMIT) and self._reap():
            drop = self._refusal(relay, src)
        if drop is None and not initial_decrypts(initial):
            drop = Drop.UNDECRYPTABLE  # checked after the counters: they are cheaper
        if drop is not None:
            self._stats[drop] += 1
            return
        pending = _Pending(src, relay, self._loop.time())
        conn = self._new_connection(src, self.admit)
        pending.conn = conn
        self._pending += 1
        self._unproven_by_peer[src] += 1
        self._unproven_by_relay[relay] += 1
        self._unproven[pending] = None
        path = Path.relay(relay)
        conn.paths.add(path, self._relay_sender(relay, src))
        conn._start_server(initial, path)
        self._stats["incoming"] += 1
        self._loop.create_task(self._admit_when_ready(pending, conn))

    def _refusal(self, relay: Address, src: PeerId) -> Drop | None:
        if self._is_closed():
            return Drop.CLOSING
        if self._pending >= self._config.accept_backlog:
            return Drop.BACKLOG
        if self._unproven_by_peer[src] >= self._config.pending_per_peer:
            return Drop.PEER_LIMIT
        if self._unproven_by_relay[relay] >= self._config.pending_per_relay:
            return Drop.RELAY_LIMIT
        return None

    def _unshare(self, pending: _Pending) -> None:
        """``pending`` no longer counts against its sender's and relay's shares."""
        if pending.unshared:
            return
        pending.unshared = True
        self._unproven.pop(pending, None)
        _release(self._unproven_by_peer, pending.sender)
        _release(self._unproven_by_relay, pending.relay)

    def _free_slot(self, pending: _Pending) -> None:
        if pending.holds_slot:
            pending.holds_slot = False
            self._pending -= 1

    def _reap(self) -> bool:
        """Drop every connection still unauthenticated ``pending_timeout`` after its first
        Initial (True if any). Run when a slot is wanted, not on a timer: reclaiming lazily
        costs nothing while slots are free, and adds no event to the loop (the simulator's
        order of events, hence its outcome for a given seed, stays that of legitimate
        traffic)."""
        deadline = self._loop.time() - self._config.pending_timeout
        expired = []
        for pending in self._unproven:  # oldest first
            if pending.started > deadline:
                break
            expired.append(pending)
        for pending in expired:
            self._expire(pending)
        return bool(expired)

    def _expire(self, pending: _Pending) -> None:
        """The caller did not prove its id in time: free the slot at once, close with why."""
        conn = pending.conn
        self._unshare(pending)
        self._free_slot(pending)
        if conn is None or conn.closed:
            return
        self._stats[Drop.EXPIRED] += 1
        conn._fail_setup(
            SetupFailure(
                HandshakeFailed("the dialer did not authenticate in time"),
                CLOSE_AUTH_FAILED,
                "authentication timeout",
            )
        )

    async def _admit_when_ready(self, pending: _Pending, conn: Connection) -> None:
        try:
            await conn._wait_ready()
        except (ConnectError, ConnectionClosed) as exc:
            log.info("incoming connection from %s failed: %s", conn.peer_id.short, exc)
            self._stats["incoming_failed"] += 1
            return
        finally:
            self._free_slot(pending)
            self._unshare(pending)  # also when it failed: the slot is free
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
