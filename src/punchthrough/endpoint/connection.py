"""``Connection``: one end-to-end QUIC connection to a peer, over whatever path works.

It owns the call's state and wires its parts together: the QUIC driver (aioquic, fed through
the path manager, which decides which path each packet takes), peer authentication
(:mod:`~punchthrough.endpoint.peerauth`), the control stream (end-to-end authenticated,
invisible to the relay: hangups, and candidates and NAT reports for the traversal agent),
keepalives, and the traversal agent that moves the call onto a direct path. The control stream
stays open for the life of the call.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from punchthrough.endpoint.codes import (
    CLOSE_BUSY,
    CLOSE_HANGUP,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REFUSED,
    describe_close,
)
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
from punchthrough.endpoint.peerauth import (
    Admit,
    SetupFailure,
    accept,
    auth_deadline,
    dial,
    pin_acceptor,
)
from punchthrough.endpoint.report import TraversalReport, build_report
from punchthrough.identity import Identity, PeerId, channel_binding
from punchthrough.signal import (
    Hangup,
    Message,
    MessageTooLarge,
    SignalDecodeError,
    encode_frame,
    read_message,
)
from punchthrough.transport.path import VIRTUAL_PEER_ADDRESS, Path, PathManager
from punchthrough.transport.quic import (
    QuicDriver,
    QuicStreamWriter,
    reset_pto_backoff,
    smoothed_rtt,
    trim_pending_datagrams,
)
from punchthrough.traversal.agent import DirectHost, TraversalAgent

if TYPE_CHECKING:
    from punchthrough.netio import Address

log = logging.getLogger(__name__)

#: The dialer's first bidirectional stream (RFC 9000 section 2.1: client-initiated bidi ids
#: are 0, 4, 8, ...): the control stream.
CONTROL_STREAM_ID: Final = 0
#: The reason aioquic gives when its idle timer fires (RFC 9000 section 10.1).
_AIOQUIC_IDLE_REASON: Final = "Idle timeout"

#: Control-message handler (issue 5 registers candidate exchange here).
ControlHandler = Callable[[Message], None]


class _CidHook:
    """Stands in for the socket multiplexer when a :class:`QuicDriver` registers CIDs.

    The driver would route packets by CID straight into aioquic with their *real* source
    address; peer connections must instead see every packet through the path manager (and
    aioquic must only ever see the virtual address). So the endpoint learns each CID (to route
    relayed packets) and the mux routes direct packets to :meth:`Connection._direct_packet`.
    """

    def __init__(self, conn: Connection, register: Callable[[bytes, Connection | None], None]):
        self._conn = conn
        self._register = register

    def add_quic_cid(self, cid: bytes, handler: object) -> None:
        self._register(bytes(cid), self._conn)

    def remove_quic_cid(self, cid: bytes) -> None:
        self._register(bytes(cid), None)


class Connection:
    """An end-to-end encrypted QUIC connection to one authenticated peer.

    Created by :meth:`Endpoint.connect` and :meth:`Endpoint.accept`; never directly.
    Datagrams (RFC 9221) are for media: ``send_datagram`` never blocks and drops the oldest
    queued datagram under congestion. Streams are reliable asyncio reader/writer pairs.
    """

    def __init__(
        self,
        *,
        identity: Identity,
        peer_id: PeerId,
        is_client: bool,
        config: EndpointConfig,
        register_cid: Callable[[bytes, Connection | None], None],
        on_closed: Callable[[Connection], None],
        admit: Admit | None = None,
        direct: DirectHost | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._identity = identity
        #: Dialer: the peer id dialled. Acceptor: the id the relay stamped, then the proven one.
        self.peer_id = peer_id
        self.is_client = is_client
        self._config = config
        self._on_closed = on_closed
        self._admit = admit
        self._cid_hook = _CidHook(self, register_cid)
        self.paths = PathManager(clock=self._loop.time)
        self.created_at = self._loop.time()
        self.established_at: float | None = None
        self._driver: QuicDriver | None = None
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._control_writer: QuicStreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._datagrams: DropOldestQueue[bytes] = DropOldestQueue(config.datagram_recv_queue)
        self._streams: DropOldestQueue[tuple[asyncio.StreamReader, QuicStreamWriter]] = (
            DropOldestQueue(1 << 30)  # bounded by QUIC's own stream limits (max_streams)
        )
        self._control_handlers: dict[type[Message], list[ControlHandler]] = {}
        self._closed_exc: ConnectionClosed | None = None
        self._closing_locally = False
        self._hangup_reason: str | None = None
        self._done = asyncio.Event()
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_uid = 0
        self._stats: Counter[str] = Counter()
        #: Where direct paths come from (the endpoint); ``None``: relay only.
        self._direct_host = direct
        self._agent: TraversalAgent | None = None

    # -- construction (endpoint side) ---------------------------------------------------------
    def _start_client(self) -> None:
        cfg = quic_configuration(self._identity, is_client=True, config=self._config)
        self._driver = QuicDriver.client(
            cfg,
            self._transmit,
            VIRTUAL_PEER_ADDRESS,
            on_event=self._on_event,
            mux=self._cid_hook,
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
            mux=self._cid_hook,
        )
        self._driver.set_stream_handler(self._peer_stream)
        self._spawn(auth_deadline(self._config.auth_timeout, self._ready, self._fail_setup))

    def _transmit(self, data: bytes, addr: Address) -> None:
        self.paths.send(data)  # ``addr`` is the virtual address: the path manager routes
        if self._agent is not None:
            self._agent.sent()

    def packet_received(self, data: bytes, path: Path) -> None:
        """A QUIC packet for this connection arrived on ``path`` (relay or direct)."""
        if not self.paths.received(path, len(data)) or self._driver is None:
            return
        self._driver.datagram_received(data)

    def direct_packet(self, data: bytes, addr: Address) -> None:
        """A QUIC packet for this connection on a hard stage's extra socket."""
        self._direct_packet(data, addr)

    def _direct_packet(self, data: bytes, addr: Address) -> None:
        """A QUIC packet with one of our CIDs came straight to the main socket.

        Only known direct paths are fed in (added after authenticated checks); anything else is
        dropped and counted, so nobody can inject a path by sending packets.
        """
        for path in self.paths.paths:
            if path.kind == "direct" and path.remote == addr:
                self.packet_received(data, path)
                if self._agent is not None:
                    self._agent.heard(path)
                return
        self._stats["dropped_unknown_direct"] += 1

    # -- events --------------------------------------------------------------------------------
    def _on_event(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self._handshake_completed()
        elif isinstance(event, DatagramFrameReceived):
            if self.established_at is None:
                self._stats["datagrams_dropped_before_auth"] += 1
            else:
                self._stats["datagrams_received"] += 1
                self._datagrams.put(event.data)
        elif isinstance(event, ConnectionTerminated):
            self._terminated(event)

    def _handshake_completed(self) -> None:
        assert self._driver is not None
        if not self.is_client:
            return  # the dialer speaks first, on the control stream
        failure = pin_acceptor(self._driver.connection, self.peer_id)
        if failure is not None:
            self._fail_setup(failure)
            return
        self._spawn(self._dialer_setup())

    def _fail_setup(self, failure: SetupFailure) -> None:
        """Setup failed on our side: tell the caller, close the QUIC connection with a reason."""
        if not self._ready.done():
            self._ready.set_exception(failure.error)
            self._ready.exception()  # mark retrieved: nobody may be waiting any more
        self._loop.call_soon(self._close_now, failure.code, failure.reason)

    def _close_now(self, code: int, reason: str) -> None:
        if self._driver is not None and not self._driver.closed:
            self._closing_locally = True
            self._driver.close(error_code=code, reason=reason)

    # -- setup (the exchange itself is in peerauth) -------------------------------------------
    async def _dialer_setup(self) -> None:
        assert self._driver is not None
        reader, writer = self._new_stream()
        self._control_writer = writer
        answer = await dial(self._driver.connection, self._identity, reader, writer)
        if isinstance(answer, SetupFailure):
            self._fail_setup(answer)
        elif isinstance(answer, Hangup):
            self._hangup_reason = answer.reason
            if not self._ready.done():
                self._ready.set_exception(PeerRefused(answer.reason))
        else:
            self._established()
            await self._control_loop(reader)

    def _peer_stream(self, reader: asyncio.StreamReader, writer: QuicStreamWriter) -> None:
        if writer.stream_id == CONTROL_STREAM_ID and not self.is_client:
            self._control_writer = writer
            self._spawn(self._acceptor_setup(reader))
        elif self.established_at is not None:
            self._streams.put((reader, writer))
        else:
            self._stats["streams_refused_before_auth"] += 1
            writer.write_eof()

    async def _acceptor_setup(self, reader: asyncio.StreamReader) -> None:
        assert self._driver is not None
        outcome = await accept(
            self._driver.connection,
            reader,
            stamped=self.peer_id,
            timeout=self._config.auth_timeout,
            admit=self._admit,
            send=self._send_control,
        )
        if isinstance(outcome, SetupFailure):
            self._fail_setup(outcome)
            return
        self._established()
        await self._control_loop(reader)

    def _established(self) -> None:
        self.established_at = self._loop.time()
        self._arm_keepalive()
        self._start_traversal()
        if not self._ready.done():
            self._ready.set_result(None)

    def _start_traversal(self) -> None:
        """Look for a direct path behind the relayed call (candidates, checks, upgrade)."""
        if self._direct_host is None or self._driver is None or self._agent is not None:
            return
        agent = TraversalAgent(self, self._direct_host, channel_binding(self._driver.connection))
        self._agent = agent
        assert self.established_at is not None
        agent.relay_established(self.established_at, self._relay_name())
        agent.start()

    def _relay_name(self) -> str | None:
        """The relay path, as reports and the agent name it (``None`` before one was used)."""
        return next((str(p) for p in self.paths.paths if p.kind == "relay"), None)

    # -- hooks for the traversal agent -----------------------------------------------------
    def change_connection_id(self) -> None:
        """Use a fresh connection ID towards the peer (RFC 9000 section 9.5: a new path must
        not be linkable to the old one by an observer)."""
        driver = self._driver
        if driver is None or driver.closed:
            return
        driver.connection.change_connection_id()
        driver.transmit()
        self._stats["cid_changes"] += 1

    def ping(self) -> None:
        """A QUIC PING now: an ack-eliciting packet on the current path and any mirrored one
        (the traversal agent's way to put something on the relay when a path goes quiet)."""
        driver = self._driver
        if driver is None or driver.closed or self._closed_exc is not None:
            return
        self._ping_uid += 1
        driver.connection.send_ping(self._ping_uid)
        driver.transmit()
        self._stats["pings"] += 1

    def path_switched(self) -> None:
        """The path under QUIC just changed (the traversal agent moved the call). QUIC's probe
        timeout back-off (RFC 9002 section 6.2.1: it doubles with every unanswered probe) grew
        on the old, dead path and says nothing about the new one (RFC 9000 section 9.4 resets a
        new path's recovery state too): restart it, so QUIC probes at once on the new path
        instead of seconds later. Without this, a call whose path came back after a 10 s
        outage stayed silent ~3 s longer (simulator)."""
        driver = self._driver
        if driver is None or driver.closed or self._closed_exc is not None:
            return
        if reset_pto_backoff(driver.connection):
            self._stats["pto_resets"] += 1
        driver.transmit()

    def quic_rtt(self) -> float | None:
        """QUIC's smoothed round-trip time on the current path (seconds), if measured."""
        driver = self._driver
        return smoothed_rtt(driver.connection) if driver is not None else None

    @property
    def traversal(self) -> TraversalAgent | None:
        """The direct-path machinery (``None`` before the connection is usable)."""
        return self._agent

    def _unreachable(self, exc: ConnectError) -> None:
        """The endpoint learned the peer cannot be reached (relay NOTICE): fail the dial."""
        if not self._ready.done():
            self._ready.set_exception(exc)
            self._ready.exception()

    async def _wait_ready(self) -> None:
        await asyncio.shield(self._ready)

    async def _control_loop(self, reader: asyncio.StreamReader) -> None:
        """Read control messages for the life of the connection."""
        while True:
            try:
                msg = await read_message(reader)
            except MessageTooLarge as exc:
                await self._protocol_error(f"control stream: {exc}")
                return
            except SignalDecodeError as exc:
                # The frame was consumed whole: the stream is still in sync, skip it.
                self._stats["control_malformed"] += 1
                log.debug("peer %s sent a bad control message: %s", self.peer_id.short, exc)
                continue
            if msg is None:
                return
            if isinstance(msg, Hangup):
                self._hangup_reason = msg.reason
                continue
            handlers = self._control_handlers.get(type(msg))
            if not handlers:
                self._stats["control_ignored"] += 1
                continue
            for handler in list(handlers):
                try:
                    handler(msg)
                except Exception:
                    log.exception("control handler for %s failed", type(msg).__name__)

    async def _protocol_error(self, reason: str) -> None:
        log.info("closing connection to %s: %s", self.peer_id.short, reason)
        await self.close(reason, code=CLOSE_PROTOCOL_ERROR)

    def add_control_handler(self, msg_type: type[Message], handler: ControlHandler) -> None:
        """Receive control messages of ``msg_type`` (used by the traversal machinery)."""
        self._control_handlers.setdefault(msg_type, []).append(handler)

    def _send_control(self, msg: Message) -> None:
        if self._closed_exc is not None:
            return
        if self._control_writer is None or self._control_writer.is_closing():
            return
        with contextlib.suppress(ConnectionError):
            self._control_writer.write(encode_frame(msg))

    def send_control(self, msg: Message) -> None:
        """Send one message on the control stream (end-to-end authenticated).

        After close this is a silent no-op: control traffic of a closed call has no reader.
        """
        self._send_control(msg)

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
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._agent is not None:
            self._agent.close()
        exc = self._closed_exc or ConnectionClosed("aborted")
        self._datagrams.close(exc)
        self._streams.close(exc)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if not self._done.is_set():
            self._done.set()
            try:
                self._on_closed(self)
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

    # -- keepalive -----------------------------------------------------------------------------
    def _arm_keepalive(self) -> None:
        self._keepalive = self._loop.call_later(self._config.keepalive_interval, self._tick)

    def _tick(self) -> None:
        """PING when nothing was sent for a keepalive interval (keeps relay and NAT state)."""
        self._keepalive = None
        driver = self._driver
        if driver is None or driver.closed or self._closed_exc is not None:
            return
        current = self.paths.current
        last = self.paths.paths[current].last_sent if current is not None else None
        now = self._loop.time()
        if last is None or now - last >= self._config.keepalive_interval * 0.9:
            self._ping_uid += 1
            driver.connection.send_ping(self._ping_uid)
            driver.transmit()
            self._stats["keepalives"] += 1
        self._arm_keepalive()

    # -- public API ----------------------------------------------------------------------------
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

    def traversal_report(self) -> TraversalReport:
        """What was tried, what won, why not direct (see :class:`TraversalReport`)."""
        return build_report(
            path=self.path,
            relay=self._relay_name(),
            created_at=self.created_at,
            established_at=self.established_at,
            agent=self._agent,
            direct_enabled=self._direct_host is not None,
        )

    @property
    def stats(self) -> dict[str, Any]:
        """Counters (datagrams, drops, keepalives), per-path traffic, ``rtt_ms``, ``setup_ms``."""
        out: dict[str, Any] = dict(self._stats)
        out["datagrams_dropped_recv"] = self._datagrams.dropped
        out["paths"] = self.paths.snapshot()
        out["path_stats"] = dict(self.paths.stats)
        driver = self._driver
        if driver is not None:
            rtt = smoothed_rtt(driver.connection)
            if rtt is not None:
                out["rtt_ms"] = round(rtt * 1000.0, 2)
        if self.established_at is not None:
            out["setup_ms"] = round((self.established_at - self.created_at) * 1000.0, 1)
        return out

    async def close(self, reason: str = "", *, code: int = CLOSE_HANGUP) -> None:
        """Hang up: ``Hangup`` on the control stream, then CONNECTION_CLOSE with ``reason``.

        Returns when QUIC's closing period is over (bounded by the config's close timeout).
        """
        if self._closed_exc is None:
            self._closed_exc = ConnectionClosed(reason or "closed", by_peer=False, error_code=code)
            self._closing_locally = True
            if self.established_at is not None:
                self._send_control(Hangup(reason=reason[:256]))
            if self._driver is not None and not self._driver.closed:
                self._driver.close(error_code=code, reason=reason)
            if not self._ready.done():
                self._ready.set_exception(ConnectionClosed(reason or "closed"))
                self._ready.exception()
            self._datagrams.close(self._closed_exc)
            self._streams.close(self._closed_exc)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._config.close_timeout):
                await self.wait_closed()
        self.abort()

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

    def __repr__(self) -> str:
        role = "dialer" if self.is_client else "acceptor"
        return f"Connection({self.peer_id.short}, {role}, path={self.path})"
