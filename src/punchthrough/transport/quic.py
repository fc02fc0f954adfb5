"""Drive one aioquic ``QuicConnection`` (sans-IO) on the running event loop.

aioquic's connection takes datagrams and ``now`` and returns datagrams, events and a timer; this
adapter feeds it, arms its timer with ``loop.call_at`` (so the simulator's virtual clock drives it
unchanged), hands outgoing datagrams to a ``transmit`` callable (the path manager decides where
they really go) and keeps the socket multiplexer's connection-ID table in step with the
connection's own CIDs. It also turns QUIC streams into asyncio reader/writer pairs.

Everything that speaks QUIC here (relay control connections, peer connections) uses it. It is
also the one place that reads aioquic's private state (see "aioquic private state" below), so
an aioquic upgrade that renames an attribute breaks this module and its tests, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from aioquic import tls

# aioquic's packet buffer and AEAD error live in private modules (``_buffer``, ``_crypto``) with
# no public alias; this module is the one place the package imports them from.
from aioquic._buffer import Buffer as Buffer
from aioquic._crypto import CryptoError as CryptoError
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, pull_quic_header

from punchthrough.netio import Address
from punchthrough.transport.demux import QUIC_CID_LENGTH

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger(__name__)

Transmit = Callable[[bytes, Address], None]


class CidRegistry(Protocol):
    """Where a connection's CIDs are announced so datagrams reach it (a ``DatagramMux``, or a
    connection-level router that checks the relay-stamped peer id too)."""

    def add_quic_cid(self, cid: bytes, handler: Callable[[bytes, Address], None]) -> None: ...

    def remove_quic_cid(self, cid: bytes) -> None: ...


EventHandler = Callable[[QuicEvent], None]

#: Default bound on out-of-order stream data a peer can make us hold, summed over its streams.
#: aioquic doubles a stream's receive window whenever the peer's highest offset passes half of
#: it, whether or not anything was delivered, and zero-fills the gap: without this bound one
#: byte per round trip at the window's edge grows our buffer without limit. Legitimate peers
#: send in order (QUIC retransmits fill holes quickly), so the gap stays near one flight.
DEFAULT_MAX_RECEIVE_BUFFER = 4 * 1024 * 1024

#: How far past a timer's deadline we tell aioquic it is when the timer fires (one nanosecond).
TIMER_EPSILON = 1e-9

#: RFC 9000 section 14.1: a client Initial must be padded to at least 1200 bytes; smaller
#: "Initials" that would create server state are dropped unanswered (anti-amplification).
MIN_INITIAL_SIZE = 1200


def is_initial(data: bytes) -> bool:
    """True for a QUIC v1 Initial big enough to open a server connection."""
    if len(data) < MIN_INITIAL_SIZE:
        return False
    try:
        header = pull_quic_header(Buffer(data=data), host_cid_length=QUIC_CID_LENGTH)
    except ValueError:
        return False
    return header.packet_type == QuicPacketType.INITIAL


def initial_destination_cid(data: bytes) -> bytes | None:
    try:
        header = pull_quic_header(Buffer(data=data), host_cid_length=QUIC_CID_LENGTH)
    except ValueError:
        return None
    return header.destination_cid


# -- aioquic private state ------------------------------------------------------------------
# aioquic (1.x) keeps the state below in private attributes and offers no public accessor for
# it. Every read of an aioquic private attribute in punchthrough is in this section; each
# function names the attribute it touches and why there is no public way.


def host_cids(connection: QuicConnection) -> list[bytes]:
    """Every connection ID the connection issued itself so far (at construction: the first)."""
    # ``QuicConnection._host_cids``: later CIDs come as ConnectionIdIssued events, but the ones
    # made in the constructor are never announced; the public ``host_cid`` names only one.
    return [c.cid for c in connection._host_cids]


def original_destination_cid(connection: QuicConnection) -> bytes:
    """The connection ID of the dialer's first Initial (RFC 9000 section 7.2): random, chosen
    by the client, and confirmed by the server's transport parameters (section 7.3)."""
    # ``QuicConnection._original_destination_connection_id``: aioquic has no public accessor.
    odcid = connection._original_destination_connection_id
    return bytes(odcid)


def undelivered_stream_bytes(connection: QuicConnection) -> int:
    """Stream bytes the peer made us hold but not yet deliver (out-of-order gaps), summed."""
    # ``QuicConnection._streams`` (and each ``QuicStream.receiver``): aioquic has no public
    # view of its streams or of their receive buffers.
    held = 0
    for stream in connection._streams.values():
        rx = stream.receiver
        held += max(0, rx.highest_offset - rx.starting_offset())
    return held


def smoothed_rtt(connection: QuicConnection) -> float | None:
    """QUIC's smoothed round-trip time (RFC 9002 section 5.3) in seconds, ``None`` before the
    first sample."""
    # ``QuicConnection._loss._rtt_smoothed`` (its ``QuicPacketRecovery``): aioquic only logs it
    # (qlog); read defensively, as stats must never raise.
    rtt = getattr(getattr(connection, "_loss", None), "_rtt_smoothed", None)
    return rtt if isinstance(rtt, float) and rtt > 0 else None


def reset_pto_backoff(connection: QuicConnection) -> bool:
    """Restart the probe timeout back-off (RFC 9002 section 6.2.1); True if it had grown."""
    # ``QuicConnection._loss._pto_count``: aioquic resets it only on an ACK (or a discarded
    # packet space) and cannot be told the path changed under it (we route beneath it).
    loss = connection._loss
    if loss._pto_count:
        loss._pto_count = 0
        return True
    return False


def trim_pending_datagrams(connection: QuicConnection, limit: int) -> int:
    """Drop the oldest unsent DATAGRAM payloads until fewer than ``limit`` are queued; returns
    how many were dropped."""
    # ``QuicConnection._datagrams_pending``: ``send_datagram_frame`` appends to this unbounded
    # deque and nothing public shows or bounds it.
    pending = connection._datagrams_pending
    dropped = 0
    while len(pending) >= limit:
        pending.popleft()
        dropped += 1
    return dropped


def validated_peer_address(connection: QuicConnection) -> Address | None:
    """The peer's address on the current network path once aioquic validated it (RFC 9000
    section 8.2: after a migration), else ``None``."""
    # ``QuicConnection._network_paths`` (current path first): aioquic migrates silently, with
    # no event or getter for the validated peer address.
    paths = connection._network_paths
    if paths and paths[0].is_validated:
        current = paths[0].addr
        return (str(current[0]), int(current[1]))
    return None


def peer_certificates(ctx: tls.Context) -> list[x509.Certificate]:
    """The certificates the TLS peer presented, leaf first; empty if none (yet)."""
    # ``tls.Context._peer_certificate`` and ``._peer_certificate_chain``: parsed from the
    # Certificate message for aioquic's own CA check (off: we pin peer ids instead), and
    # exposed by no public attribute, event or callback.
    leaf: x509.Certificate | None = getattr(ctx, "_peer_certificate", None)
    if leaf is None:
        return []
    rest: list[x509.Certificate] = list(getattr(ctx, "_peer_certificate_chain", []))
    return [leaf, *rest]


class QuicDriver:
    """One QuicConnection, its timer, its CIDs in the mux, and its streams.

    ``peer_address`` is what aioquic believes the peer's address is; for peer connections it is
    a fixed virtual address (the path manager routes underneath), for relay control connections
    the relay's real address.
    """

    def __init__(
        self,
        connection: QuicConnection,
        transmit: Transmit,
        peer_address: Address,
        *,
        on_event: EventHandler | None = None,
        mux: CidRegistry | None = None,
        extra_cids: tuple[bytes, ...] = (),
        max_receive_buffer: int = DEFAULT_MAX_RECEIVE_BUFFER,
    ) -> None:
        self.connection = connection
        self.max_receive_buffer = max_receive_buffer
        self.peer_address = peer_address
        self._transmit = transmit
        self._on_event = on_event
        self._mux = mux
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._cids: set[bytes] = set()
        self._readers: dict[int, asyncio.StreamReader] = {}
        self._stream_handler: Callable[[asyncio.StreamReader, QuicStreamWriter], None] | None = None
        self._closed = self._loop.create_future()
        self.terminated: ConnectionTerminated | None = None
        for cid in (*extra_cids, *host_cids(connection)):
            self._add_cid(cid)

    # -- construction helpers ------------------------------------------------------------
    @classmethod
    def client(
        cls,
        configuration: QuicConfiguration,
        transmit: Transmit,
        peer_address: Address,
        **kw: object,
    ) -> QuicDriver:
        conn = QuicConnection(configuration=configuration)
        driver = cls(conn, transmit, peer_address, **kw)  # type: ignore[arg-type]
        conn.connect(peer_address, now=driver._loop.time())
        driver.transmit()
        return driver

    @classmethod
    def server(
        cls,
        configuration: QuicConfiguration,
        initial: bytes,
        transmit: Transmit,
        peer_address: Address,
        **kw: object,
    ) -> QuicDriver:
        """Accept a connection from its first Initial (caller checked ``is_initial``)."""
        odcid = initial_destination_cid(initial)
        conn = QuicConnection(configuration=configuration, original_destination_connection_id=odcid)
        extra = (odcid,) if odcid else ()
        driver = cls(conn, transmit, peer_address, extra_cids=extra, **kw)  # type: ignore[arg-type]
        driver.datagram_received(initial)
        return driver

    # -- I/O -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed.done()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def datagram_received(self, data: bytes, addr: Address | None = None) -> None:
        """Feed one QUIC datagram, whatever path it came by."""
        if self.closed:
            return
        self.connection.receive_datagram(data, addr or self.peer_address, now=self._loop.time())
        self._enforce_receive_buffer()
        self._process_events()
        self.transmit()

    def _enforce_receive_buffer(self) -> None:
        held = undelivered_stream_bytes(self.connection)
        if held > self.max_receive_buffer:
            log.warning(
                "peer %s holds %d bytes of undelivered stream data: closing",
                self.peer_address,
                held,
            )
            self.connection.close(
                error_code=QuicErrorCode.FLOW_CONTROL_ERROR,
                reason_phrase=f"more than {self.max_receive_buffer} bytes of stream data held",
            )

    def transmit(self) -> None:
        """Send what the connection has queued and re-arm its timer."""
        if self.closed:
            return
        now = self._loop.time()
        for data, addr in self.connection.datagrams_to_send(now=now):
            try:
                self._transmit(data, addr)
            except OSError as exc:  # socket closed under us: the connection will time out
                log.debug("transmit failed: %s", exc)
        timer_at = self.connection.get_timer()
        if timer_at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = timer_at
            if timer_at is not None:
                self._timer = self._loop.call_at(timer_at, self._handle_timer)

    def _handle_timer(self) -> None:
        due = self._timer_at or 0.0
        self._timer = None
        self._timer_at = None
        # The loop may run a timer a hair early, and aioquic compares its deadlines with ">":
        # tell it a moment past the deadline, or it re-arms the same timer at the same virtual
        # instant forever (seen in the simulator with jitter).
        self.connection.handle_timer(now=max(due, self._loop.time()) + TIMER_EPSILON)
        self._process_events()
        self.transmit()

    def _process_events(self) -> None:
        event = self.connection.next_event()
        while event is not None:
            if isinstance(event, ConnectionIdIssued):
                self._add_cid(event.connection_id)
            elif isinstance(event, ConnectionIdRetired):
                self._remove_cid(event.connection_id)
            elif isinstance(event, StreamDataReceived):
                self._stream_data(event)
            elif isinstance(event, StreamReset):
                reader = self._readers.pop(event.stream_id, None)
                if reader is not None:
                    reader.set_exception(ConnectionResetError(f"stream {event.stream_id} reset"))
            elif isinstance(event, ConnectionTerminated):
                self.terminated = event
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("QUIC event handler failed on %r", event)
            if isinstance(event, ConnectionTerminated):
                self._finish()
                return
            event = self.connection.next_event()

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for cid in list(self._cids):
            self._remove_cid(cid)
        for reader in self._readers.values():
            reader.feed_eof()
        self._readers.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    def _add_cid(self, cid: bytes) -> None:
        self._cids.add(cid)
        if self._mux is not None:
            self._mux.add_quic_cid(cid, self.datagram_received)

    def _remove_cid(self, cid: bytes) -> None:
        self._cids.discard(cid)
        if self._mux is not None:
            self._mux.remove_quic_cid(cid)

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close gracefully (CONNECTION_CLOSE is sent); ``wait_closed`` returns once drained."""
        if self.closed:
            return
        self.connection.close(error_code=error_code, reason_phrase=reason)
        self.transmit()

    def abort(self) -> None:
        """Forget the connection at once, without telling the peer (resources released)."""
        self._finish()

    # -- streams ---------------------------------------------------------------------------
    def set_stream_handler(
        self, handler: Callable[[asyncio.StreamReader, QuicStreamWriter], None] | None
    ) -> None:
        """Called for every stream the peer opens."""
        self._stream_handler = handler

    def open_stream(self) -> tuple[asyncio.StreamReader, QuicStreamWriter]:
        stream_id = self.connection.get_next_available_stream_id()
        # aioquic allocates a stream id only when data is first sent on it: send nothing now, so
        # a second open_stream() before any write gets the next id instead of this one again.
        self.connection.send_stream_data(stream_id, b"", end_stream=False)
        return self._make_stream(stream_id)

    def _make_stream(self, stream_id: int) -> tuple[asyncio.StreamReader, QuicStreamWriter]:
        reader = asyncio.StreamReader()
        self._readers[stream_id] = reader
        return reader, QuicStreamWriter(self, stream_id)

    def _stream_data(self, event: StreamDataReceived) -> None:
        reader = self._readers.get(event.stream_id)
        if reader is None:
            reader, writer = self._make_stream(event.stream_id)
            if self._stream_handler is not None:
                self._stream_handler(reader, writer)
        reader.feed_data(event.data)
        if event.end_stream:
            reader.feed_eof()
            self._readers.pop(event.stream_id, None)


class QuicStreamWriter:
    """The writing half of a QUIC stream, shaped like ``asyncio.StreamWriter`` where it matters."""

    def __init__(self, driver: QuicDriver, stream_id: int) -> None:
        self._driver = driver
        self.stream_id = stream_id
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError(f"stream {self.stream_id} is closed for writing")
        if self._driver.closed:
            raise ConnectionResetError("QUIC connection is closed")
        self._driver.connection.send_stream_data(self.stream_id, data, end_stream=False)
        self._driver.transmit()

    def write_eof(self) -> None:
        if self._closed or self._driver.closed:
            return
        self._closed = True
        self._driver.connection.send_stream_data(self.stream_id, b"", end_stream=True)
        self._driver.transmit()

    def can_write_eof(self) -> bool:
        return True

    async def drain(self) -> None:
        """QUIC flow control buffers inside aioquic; yield so the loop can send."""
        if self._driver.closed:
            raise ConnectionResetError("QUIC connection is closed")
        await asyncio.sleep(0)

    def close(self) -> None:
        self.write_eof()

    def is_closing(self) -> bool:
        return self._closed or self._driver.closed

    async def wait_closed(self) -> None:
        await asyncio.sleep(0)
