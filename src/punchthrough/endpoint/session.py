"""The QUIC half of a peer connection: :class:`PeerSession`, the base of ``Connection``.

One aioquic connection carried by a path manager (aioquic only ever sees one virtual peer
address; the path manager picks the real path, relay or direct, for each packet), its lifecycle
(setup outcome, why it closed, its tasks) and the application's datagrams and streams. Kept
apart from what makes it a *peer* call (authentication, control stream, keepalive, traversal:
:mod:`punchthrough.endpoint.connection`) so that each half reads on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
)

from punchthrough.endpoint.codes import CLOSE_BUSY, CLOSE_REFUSED, describe_close
from punchthrough.endpoint.config import (
    MAX_DATAGRAM_PAYLOAD,
    EndpointConfig,
    quic_configuration,
)
from punchthrough.endpoint.dropqueue import DropOldestQueue
from punchthrough.endpoint.errors import (
    ConnectError,
    ConnectionClosed,
    HandshakeFailed,
    PeerRefused,
)
from punchthrough.identity import Identity
from punchthrough.transport.path import VIRTUAL_PEER_ADDRESS, Path, PathManager
from punchthrough.transport.quic import (
    CidRegistry,
    QuicDriver,
    QuicStreamWriter,
    trim_pending_datagrams,
)

if TYPE_CHECKING:
    from punchthrough.netio import Address

log = logging.getLogger(__name__)

#: The reason aioquic gives when its idle timer fires (RFC 9000 section 10.1).
_AIOQUIC_IDLE_REASON: Final = "Idle timeout"
#: Datagrams held while the peer is not yet authenticated. The dialer may send from one relayed
#: round trip on, in the flight that carries its proof; the acceptor checks that proof half a
#: loop turn later. At 50 pps a round trip of the relay's worst 250 ms is ~13: 32 leaves room.
HELD_DATAGRAMS: Final = 32
#: Streams held likewise (an application opens a few at the start of a call).
HELD_STREAMS: Final = 8


class CidHook:
    """Stands in for the socket multiplexer when a :class:`QuicDriver` registers CIDs.

    The driver would route packets by CID straight into aioquic with their *real* source
    address; peer connections must instead see every packet through the path manager (and
    aioquic must only ever see the virtual address). So the endpoint learns each CID (to route
    relayed packets) and the mux routes direct packets to the connection's ``_direct_packet``.
    """

    def __init__(self, conn: Any, register: Callable[[bytes, Any], None]) -> None:
        self._conn = conn
        self._register = register

    def add_quic_cid(self, cid: bytes, handler: object) -> None:
        self._register(bytes(cid), self._conn)

    def remove_quic_cid(self, cid: bytes) -> None:
        self._register(bytes(cid), None)


class PeerSession:
    """One QUIC connection to a peer through a path manager; :class:`Connection` is the one
    to use (it adds authentication, the control stream and traversal).

    ``cids``: where the driver announces its connection IDs. ``on_closed``: called once, when
    the session is fully closed.
    """

    def __init__(
        self,
        *,
        identity: Identity,
        is_client: bool,
        config: EndpointConfig,
        cids: CidRegistry,
        on_closed: Callable[[], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._identity = identity
        self.is_client = is_client
        self._config = config
        self._on_closed = on_closed
        self._cids = cids
        self.paths = PathManager(clock=self._loop.time)
        self.created_at = self._loop.time()
        #: When setup completed (the peer is authenticated and admitted), in loop time.
        self.established_at: float | None = None
        self._driver: QuicDriver | None = None
        #: Setup's outcome: a result once usable, else why not.
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self._datagrams: DropOldestQueue[bytes] = DropOldestQueue(config.datagram_recv_queue)
        self._streams: DropOldestQueue[tuple[asyncio.StreamReader, QuicStreamWriter]] = (
            DropOldestQueue(1 << 30)  # bounded by QUIC's own stream limits (max_streams)
        )
        self._closed_exc: ConnectionClosed | None = None
        self._closing_locally = False
        #: The reason the peer gave in its ``Hangup`` (the close reason if QUIC's is empty).
        self._hangup_reason: str | None = None
        self._done = asyncio.Event()
        self._stats: Counter[str] = Counter()
        #: What the peer sent before it was authenticated: the application's only once it is.
        self._held_datagrams: list[bytes] = []
        self._held_streams: list[tuple[asyncio.StreamReader, QuicStreamWriter]] = []

    # -- construction (endpoint side) -------------------------------------------------------------
    def _start_client(self) -> None:
        cfg = quic_configuration(self._identity, is_client=True, config=self._config)
        self._driver = QuicDriver.client(
            cfg,
            self._transmit,
            VIRTUAL_PEER_ADDRESS,
            on_event=self._on_event,
            mux=self._cids,
        )
        self._driver.set_stream_handler(self._peer_stream)

    def _start_server(self, initial: bytes, path: Path) -> None:
        self.paths.received(path, len(initial))
        cfg = quic_configuration(self._identity, is_client=False, config=self._config)
        self._driver = QuicDriver.server(
            cfg,
            initial,
            self._transmit,
            VIRTUAL_PEER_ADDRESS,
            on_event=self._on_event,
            mux=self._cids,
        )
        self._driver.set_stream_handler(self._peer_stream)

    def _transmit(self, data: bytes, addr: Address) -> None:
        self.paths.send(data)  # ``addr`` is the virtual address: the path manager routes

    def packet_received(self, data: bytes, path: Path) -> None:
        """A QUIC packet for this connection arrived on ``path`` (relay or direct)."""
        if not self.paths.received(path, len(data)) or self._driver is None:
            return
        self._driver.datagram_received(data)

    # -- events -----------------------------------------------------------------------------------
    def _on_event(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self._handshake_completed()
        elif isinstance(event, DatagramFrameReceived):
            if self.established_at is not None:
                self._stats["datagrams_received"] += 1
                self._datagrams.put(event.data)
            elif len(self._held_datagrams) < HELD_DATAGRAMS:
                self._held_datagrams.append(event.data)
            else:
                self._stats["datagrams_dropped_before_auth"] += 1
        elif isinstance(event, ConnectionTerminated):
            self._terminated(event)

    def _handshake_completed(self) -> None:
        """The TLS handshake completed: the subclass authenticates the peer from here."""

    def _peer_stream(self, reader: asyncio.StreamReader, writer: QuicStreamWriter) -> None:
        """A stream the peer opened: the application's once setup is done, held until then
        (a few), else refused."""
        if self.established_at is not None:
            self._streams.put((reader, writer))
        elif len(self._held_streams) < HELD_STREAMS:
            self._held_streams.append((reader, writer))
        else:
            self._stats["streams_refused_before_auth"] += 1
            writer.write_eof()

    def _release_held(self) -> None:
        """The peer is authenticated: what it sent before is the application's now."""
        for data in self._held_datagrams:
            self._stats["datagrams_received"] += 1
            self._datagrams.put(data)
        for pair in self._held_streams:
            self._streams.put(pair)
        self._stats["datagrams_held_before_auth"] += len(self._held_datagrams)
        self._held_datagrams.clear()
        self._held_streams.clear()

    def _close_now(self, code: int, reason: str) -> None:
        if self._driver is not None and not self._driver.closed:
            self._closing_locally = True
            self._driver.close(error_code=code, reason=reason)

    def _new_stream(self) -> tuple[asyncio.StreamReader, QuicStreamWriter]:
        assert self._driver is not None
        reader, writer = self._driver.open_stream()
        # aioquic only marks a stream id used once data is sent on it; reserve it now so two
        # open_stream() calls in a row cannot hand out the same id.
        self._driver.connection.send_stream_data(writer.stream_id, b"")
        return reader, writer

    def _terminated(self, event: ConnectionTerminated) -> None:
        by_peer = not self._closing_locally
        reason = event.reason_phrase or self._hangup_reason or describe_close(event.error_code)
        if event.reason_phrase == _AIOQUIC_IDLE_REASON and not self._closing_locally:
            by_peer = False
            reason = (
                f"idle timeout: nothing heard from the peer for {self._config.idle_timeout:g} s"
            )
        if self._closed_exc is None:
            self._closed_exc = ConnectionClosed(
                reason, by_peer=by_peer, error_code=event.error_code
            )
        if not self._ready.done():
            exc: ConnectError
            if event.error_code in (CLOSE_REFUSED, CLOSE_BUSY) and by_peer:
                exc = PeerRefused(reason)
            else:
                exc = HandshakeFailed(f"connection closed during setup: {reason}")
            self._ready.set_exception(exc)
            self._ready.exception()
        self._finish()

    def _finish(self) -> None:
        exc = self._closed_exc or ConnectionClosed("aborted")
        self._held_datagrams.clear()  # never authenticated: never the application's
        self._held_streams.clear()
        self._datagrams.close(exc)
        self._streams.close(exc)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if not self._done.is_set():
            self._done.set()
            try:
                self._on_closed()
            except Exception:
                log.exception("on_closed callback failed")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("connection task failed", exc_info=task.exception())

    # -- public API -------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """``"relay"`` or ``"direct"`` (``"none"`` while no path is usable)."""
        return self.paths.kind

    @property
    def path_changes(self) -> list[dict[str, object]]:
        """Every switch of path: ``{t_ms, from, to, ...}``, ``t_ms`` from connection start."""
        return [c.to_json(self.created_at) for c in self.paths.changes]

    @property
    def closed(self) -> bool:
        return self._closed_exc is not None or self._done.is_set()

    @property
    def close_reason(self) -> ConnectionClosed | None:
        """Why the connection closed (``None`` while open)."""
        return self._closed_exc

    def _check_open(self) -> QuicDriver:
        if self._closed_exc is not None:
            raise ConnectionClosed(
                self._closed_exc.reason,
                by_peer=self._closed_exc.by_peer,
                error_code=self._closed_exc.error_code,
            )
        if self._driver is None or self._driver.closed:
            raise ConnectionClosed("not connected")
        return self._driver

    def send_datagram(self, data: bytes) -> None:
        """Queue one unreliable datagram; never blocks.

        Raises ``ValueError`` if it is larger than :data:`MAX_DATAGRAM_PAYLOAD`, and
        :class:`ConnectionClosed` after close. Under congestion the oldest queued datagram is
        dropped (``stats["datagrams_dropped_send"]``).
        """
        driver = self._check_open()
        if len(data) > MAX_DATAGRAM_PAYLOAD:
            raise ValueError(
                f"datagram of {len(data)} bytes exceeds the limit of {MAX_DATAGRAM_PAYLOAD} bytes"
            )
        # aioquic queues unsent datagrams without bound: keep our send queue's bound.
        dropped = trim_pending_datagrams(driver.connection, self._config.datagram_send_queue)
        if dropped:
            self._stats["datagrams_dropped_send"] += dropped
        driver.connection.send_datagram_frame(bytes(data))
        self._stats["datagrams_sent"] += 1
        driver.transmit()

    async def recv_datagram(self) -> bytes:
        """The next datagram; raises :class:`ConnectionClosed` once closed and drained."""
        return await self._datagrams.get()

    async def datagrams(self) -> AsyncIterator[bytes]:
        """Iterate over received datagrams until the connection closes (then it just ends)."""
        while True:
            try:
                yield await self._datagrams.get()
            except ConnectionClosed:
                return

    async def open_stream(self) -> tuple[asyncio.StreamReader, QuicStreamWriter]:
        """A new bidirectional stream; the peer sees it on ``accept_stream`` when data flows."""
        self._check_open()
        return self._new_stream()

    async def accept_stream(self) -> tuple[asyncio.StreamReader, QuicStreamWriter]:
        """The next stream the peer opened; raises :class:`ConnectionClosed` once closed."""
        return await self._streams.get()

    def abort(self) -> None:
        """Forget the connection at once (no CONNECTION_CLOSE); the peer will time out."""
        if self._closed_exc is None:
            self._closed_exc = ConnectionClosed("aborted", by_peer=False)
        if self._driver is not None:
            self._driver.abort()
        if not self._ready.done():
            self._ready.set_exception(ConnectionClosed("aborted"))
            self._ready.exception()
        self._finish()

    async def wait_closed(self) -> None:
        """Return once the connection is fully closed (by either side, or lost)."""
        await self._done.wait()
