"""``Connection``: one end-to-end QUIC connection to an authenticated peer, on any path.

The peer half of the call, on top of :class:`~punchthrough.endpoint.session.PeerSession` (the
QUIC half): setup through :mod:`~punchthrough.endpoint.peerauth`, the control stream (end to
end authenticated, invisible to the relay: hangups, and candidates and NAT reports for the
traversal agent; open for the life of the call), keepalives, and the traversal agent that moves
the call onto a direct path and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from punchthrough.endpoint.callkeys import CallKeys
from punchthrough.endpoint.codes import CLOSE_HANGUP, CLOSE_PROTOCOL_ERROR
from punchthrough.endpoint.config import EndpointConfig
from punchthrough.endpoint.errors import (
    ConnectError,
    ConnectionClosed,
    HandshakeFailed,
    PeerRefused,
)
from punchthrough.endpoint.peerauth import (
    Admit,
    SetupFailure,
    auth_deadline,
    early_answer,
    pin_acceptor,
    read_answer,
    send_auth,
    verify_auth,
)
from punchthrough.endpoint.report import TraversalReport, build_report
from punchthrough.endpoint.session import CidHook, PeerSession
from punchthrough.identity import Identity, PeerId
from punchthrough.signal import (
    Hangup,
    Message,
    MessageTooLarge,
    SignalDecodeError,
    encode_frame,
    read_message,
)
from punchthrough.transport.path import Path
from punchthrough.transport.quic import QuicStreamWriter, reset_pto_backoff, smoothed_rtt
from punchthrough.traversal.agent import DirectHost, TraversalAgent
from punchthrough.traversal.offer import Offer, OfferError, first_flight

if TYPE_CHECKING:
    from punchthrough.netio import Address

log = logging.getLogger(__name__)

#: The dialer's first bidirectional stream (RFC 9000 section 2.1: client-initiated bidi ids
#: are 0, 4, 8, ...): its control stream (dialer -> acceptor).
CONTROL_STREAM_ID: Final = 0
#: The acceptor's first bidirectional stream (server-initiated bidi ids are 1, 5, 9, ...): its
#: control stream (acceptor -> dialer). A stream of its own, because the acceptor speaks first,
#: as 0.5-RTT data, before the dialer's stream 0 exists.
ACCEPTOR_CONTROL_STREAM_ID: Final = 1

#: Control-message handler (issue 5 registers candidate exchange here).
ControlHandler = Callable[[Message], None]


class Connection(PeerSession):
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
        super().__init__(
            identity=identity,
            is_client=is_client,
            config=config,
            cids=CidHook(self, register_cid),
            on_closed=functools.partial(on_closed, self),
        )
        #: Dialer: the peer id dialled. Acceptor: the id the relay stamped, then the proven one.
        self.peer_id = peer_id
        self._admit = admit
        self._control_writer: QuicStreamWriter | None = None
        self._control_handlers: dict[type[Message], list[ControlHandler]] = {}
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_uid = 0
        #: Where direct paths come from (the endpoint); ``None``: relay only.
        self._direct_host = direct
        self._agent: TraversalAgent | None = None
        self._keys: CallKeys | None = None
        #: Acceptor: the dialer's early offer, opened (``None``: none came, or not yet).
        self._offer: Offer | None = None
        #: Acceptor: the generation of the candidates sent as 0.5-RTT data (-1: none).
        self._early_generation = -1
        self._early_summary = False
        #: Acceptor: the early admission's outcome (True: admitted, ``Hello`` sent).
        self._admitted: asyncio.Future[bool] = self._loop.create_future()

    # -- construction and packets (endpoint side) -------------------------------------------------
    def _start_client(self) -> None:
        """Dialer: the Initial, then our sealed offer right behind it through the relay."""
        super()._start_client()
        if self._direct_host is not None:
            offer = self._call_keys().seal(self._direct_host.local_candidates)
            if offer is not None and self.paths.send(offer):
                self._stats["offers_sent"] += 1

    def _call_keys(self) -> CallKeys:
        if self._keys is None:
            assert self._driver is not None
            quic = self._driver.connection
            self._keys = CallKeys(self._identity, self.peer_id, quic, dialer=self.is_client)
        return self._keys

    def early_offer(self, payload: bytes) -> str:
        """Acceptor: the dialer's offer, relayed beside its Initial (the router checked that
        the relay stamped the id we are talking to). It opens only with the call secret.
        Returns what became of it (``opened``, ``refused``, ``ignored``: the router counts)."""
        if self.is_client or self._offer is not None or self._agent is not None:
            return "ignored"
        try:
            self._offer = self._call_keys().open(payload)
        except OfferError as exc:
            log.debug("early offer from %s refused: %s", self.peer_id.short, exc)
            return "refused"
        self._early_flight()
        return "opened"

    def _start_server(self, initial: bytes, path: Path) -> None:
        super()._start_server(initial, path)
        _, self._control_writer = self._new_stream()  # ACCEPTOR_CONTROL_STREAM_ID
        self._spawn(auth_deadline(self._config.auth_timeout, self._ready, self._fail_setup))
        self._spawn(self._acceptor_early())

    def _transmit(self, data: bytes, addr: Address) -> None:
        super()._transmit(data, addr)
        if self._agent is not None:
            self._agent.sent()

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

    # -- setup (the exchange itself is in peerauth) -----------------------------------------------
    async def _acceptor_early(self) -> None:
        """Acceptor, at the dialer's Initial: admission's answer and our candidates, as 0.5-RTT
        data (they reach the dialer with the handshake, so its call is usable one relayed
        round trip after ``connect()``)."""
        failure = await early_answer(self.peer_id, self._admit, self._send_control)
        if failure is not None:
            self._admitted.set_result(False)
            self._fail_setup(failure)
            return
        self._admitted.set_result(True)
        self._early_flight()

    def _early_flight(self) -> None:
        """Acceptor, admitted and holding the dialer's offer (so the dialer holds its key):
        our candidates as 0.5-RTT data, and checks from now on. Without an offer they wait
        for the proof (a relay that stamps an admitted id on its own Initial learns none)."""
        admitted = self._admitted.done() and self._admitted.result()
        host = self._direct_host
        if not admitted or self._offer is None or host is None or self._early_generation >= 0:
            return
        if self.established_at is not None or self._closed_exc is not None:
            return
        local = host.local_candidates
        for msg in first_flight(local):
            self._send_control(msg)
        self._early_generation = local.generation
        self._early_summary = local.summary_final
        self._start_traversal(early=self._offer)

    def _handshake_completed(self) -> None:
        assert self._driver is not None
        if not self.is_client:
            return  # the dialer proves itself on its control stream
        failure = pin_acceptor(self._driver.connection, self.peer_id)
        if failure is not None:
            self._fail_setup(failure)
            return
        _, writer = self._new_stream()  # CONTROL_STREAM_ID
        self._control_writer = writer
        send_auth(self._driver.connection, self._identity, writer)

    def _fail_setup(self, failure: SetupFailure) -> None:
        """Setup failed on our side: tell the caller, close the QUIC connection with a reason."""
        if not self._ready.done():
            self._ready.set_exception(failure.error)
            self._ready.exception()  # mark retrieved: nobody may be waiting any more
        self._loop.call_soon(self._close_now, failure.code, failure.reason)

    async def _dialer_setup(self, reader: asyncio.StreamReader) -> None:
        """Dialer: the acceptor's answer (on its control stream), then its control messages."""
        answer = await read_answer(reader)
        if self._control_writer is None and not isinstance(answer, SetupFailure):
            # Its control stream before the handshake completed (and we authenticated).
            answer = SetupFailure(
                HandshakeFailed("acceptor spoke before the handshake completed"),
                CLOSE_PROTOCOL_ERROR,
                "early control stream",
            )
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
        if self.established_at is None and writer.stream_id == self._peer_control_stream:
            self._spawn(
                self._dialer_setup(reader) if self.is_client else self._acceptor_setup(reader)
            )
        else:
            super()._peer_stream(reader, writer)

    @property
    def _peer_control_stream(self) -> int:
        return ACCEPTOR_CONTROL_STREAM_ID if self.is_client else CONTROL_STREAM_ID

    async def _acceptor_setup(self, reader: asyncio.StreamReader) -> None:
        """Acceptor: the dialer's proof on its control stream, then its control messages."""
        assert self._driver is not None
        outcome = await verify_auth(
            self._driver.connection,
            reader,
            stamped=self.peer_id,
            timeout=self._config.auth_timeout,
        )
        if isinstance(outcome, SetupFailure):
            self._fail_setup(outcome)
            return
        if not await asyncio.shield(self._admitted):
            return  # refused at the Initial: the connection is closing
        self._established()
        await self._control_loop(reader)

    def _established(self) -> None:
        self.established_at = self._loop.time()
        self._release_held()
        self._arm_keepalive()
        if self._agent is not None:  # started early, on the dialer's offer
            self._agent.proof_checked(self.established_at, self._relay_name())
        else:
            self._start_traversal()
        if not self._ready.done():
            self._ready.set_result(None)

    def _unreachable(self, exc: ConnectError) -> None:
        """The endpoint learned the peer cannot be reached (relay NOTICE): fail the dial."""
        if not self._ready.done():
            self._ready.set_exception(exc)
            self._ready.exception()

    async def _wait_ready(self) -> None:
        await asyncio.shield(self._ready)

    def _start_traversal(self, early: Offer | None = None) -> None:
        """Look for a direct path behind the relayed call (candidates, checks, upgrade); with
        ``early`` (acceptor, before the proof) from the dialer's offer on."""
        if self._direct_host is None or self._driver is None or self._agent is not None:
            return
        settings = self._config.traversal_settings()
        secret = self._call_keys().secret
        agent = TraversalAgent(self, self._direct_host, secret, settings, proven=early is None)
        self._agent = agent
        if early is None:
            assert self.established_at is not None
            agent.relay_established(self.established_at, self._relay_name())
        sent = self._early_generation >= 0
        agent.start(self._early_generation if sent else None)
        if sent and not self._early_summary and self._direct_host.local_candidates.summary_final:
            agent.local_summary_ready()  # it became known between 0.5-RTT and now
        if early is not None:
            agent.start_early(early)

    def _relay_name(self) -> str | None:
        """The relay path, as reports and the agent name it (``None`` before one was used)."""
        return next((str(p) for p in self.paths.paths if p.kind == "relay"), None)

    # -- hooks for the traversal agent ------------------------------------------------------------
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

    # -- control stream ---------------------------------------------------------------------------
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

    # -- keepalive and teardown -------------------------------------------------------------------
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

    def _finish(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._agent is not None:
            self._agent.close()
        super()._finish()

    # -- public API -------------------------------------------------------------------------------
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

    def __repr__(self) -> str:
        role = "dialer" if self.is_client else "acceptor"
        return f"Connection({self.peer_id.short}, {role}, path={self.path})"
