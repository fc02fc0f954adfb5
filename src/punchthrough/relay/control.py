"""The relay's control connections: one QUIC connection per client, one control stream on it.

A new QUIC Initial on a primary socket creates a server connection (ALPN
``punchthrough-relay/1``, the relay's identity certificate), within the relay-wide limits (new
connections per second, connections in all and per IP, registered clients).

Registration: the client sends ``RelayRegister`` on a bidirectional stream, signing the
connection's channel binding under ``RELAY_REGISTER_CONTEXT``. The signature proves key
possession *for this connection*, so it cannot be replayed on another one; that is why the
relay does not check ``timestamp_ms`` against a clock (client clocks are unrelated to ours and
the simulator has no wall clock): replay protection comes from the channel binding. Claiming
another peer's id fails (401): the claimant cannot sign for that key.

Rules (documented choices):

* A registration is bound to the source address of the control connection (updated when QUIC
  migration to a new client address is validated, i.e. NAT rebinding during a connection).
* The same peer id registering again (a new connection, e.g. after NAT rebinding or a restart)
  replaces the old registration, and the old control connection is closed with reason
  ``registration replaced``. So is a registration displaced by another connection from the
  same source address (a source address stamps exactly one peer id). Two live devices sharing
  one identity therefore displace each other: identities are per device.
* A registration ends when its control connection closes or idles out (``idle_timeout``;
  clients PING every ``keepalive_ms`` = idle/3).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from typing import Final

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent

from punchthrough.identity import (
    RELAY_REGISTER_CONTEXT,
    BadSignature,
    ChannelBindingUnavailable,
    Identity,
    apply_identity,
    channel_binding,
    verify_exporter,
)
from punchthrough.netio import Address, DatagramSocket
from punchthrough.relay.close import RelayCloseCode
from punchthrough.relay.control_driver import ControlDriver
from punchthrough.relay.directory import DIRECTORY_TIMEOUT, DirectoryUnavailable
from punchthrough.relay.early import EarlyFrames
from punchthrough.relay.fleet import FleetLink
from punchthrough.relay.frames import RELAY_ALPN, derive_frame_token
from punchthrough.relay.limits import ClientLimiter, RelayLimits, TokenBucket, address_prefix
from punchthrough.relay.registry import LocalRegistry, Registration
from punchthrough.relay.retry import RetryGate, parse_initial
from punchthrough.signal import (
    RELAY_BAD_REQUEST,
    RELAY_CONFLICT,
    RELAY_RATE_LIMITED,
    RELAY_UNAUTHORIZED,
    RELAY_UNAVAILABLE,
    Message,
    Ping,
    Pong,
    RelayAddress,
    RelayLookup,
    RelayLookupResult,
    RelayRegister,
    RelayRegistered,
    SignalError,
    read_message,
    write_message,
)
from punchthrough.signal import RelayError as RelayErrorMsg
from punchthrough.transport.demux import DatagramMux
from punchthrough.transport.initial import initial_decrypts
from punchthrough.transport.quic import QuicStreamWriter, is_initial

log = logging.getLogger(__name__)

#: RFC 9000 section 14.1: a server drops a client Initial in a datagram under 1200 bytes.
MIN_INITIAL_DATAGRAM: Final = 1200
#: QUIC application error codes on control connections (defined in :mod:`.close`).
CLOSE_NORMAL: Final = RelayCloseCode.NORMAL
CLOSE_REPLACED: Final = RelayCloseCode.REPLACED
CLOSE_PROTOCOL: Final = RelayCloseCode.PROTOCOL
CLOSE_REGISTER_TIMEOUT: Final = RelayCloseCode.REGISTER_TIMEOUT
CLOSE_SHUTDOWN: Final = RelayCloseCode.SHUTDOWN
#: Bounded write of a control reply (the client's flow control is never near full).
REPLY_TIMEOUT: Final = 5.0
#: Undelivered stream data a control connection may make us hold (QuicDriver closes it past
#: this). Control messages are a few hundred bytes (signal.MAX_FRAME_SIZE is 16 KiB).
CONTROL_RECEIVE_BUFFER = 64 * 1024


class ControlConnection:
    """One control connection and its (at most one) registration."""

    __slots__ = (
        "address",
        "driver",
        "ip",
        "local",
        "registration",
        "stream_seen",
        "task",
        "timer",
        "token",
    )

    def __init__(self, address: Address, local: Address) -> None:
        self.address = address
        self.ip = address_prefix(address[0])  # counted against max_connections_per_ip
        self.local = local
        self.driver: ControlDriver | None = None
        self.registration: Registration | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stream_seen = False
        self.token = b""  # the frame token, derived when the handshake completes


class ControlPlane:
    """Every control connection of one relay: accept, register, answer, forget, shut down."""

    def __init__(
        self,
        sockets: dict[Address, DatagramSocket],
        muxes: dict[Address, DatagramMux],
        identity: Identity,
        limits: RelayLimits,
        registry: LocalRegistry,
        stats: Counter[str],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._muxes = muxes
        self.identity = identity
        self.limits = limits
        self.registry = registry
        self._stats = stats
        #: Insertion-ordered (a dict, not a set of objects hashed by id): shutdown closes them
        #: in the same order every run, so the simulator stays deterministic.
        self.connections: dict[ControlConnection, None] = {}
        self._per_ip: Counter[str] = Counter()
        self._new_conn_bucket = TokenBucket(
            limits.new_connections_per_second, limits.new_connection_burst, self._loop.time()
        )
        #: Connections not (yet) registered, insertion-ordered like ``connections``.
        self._half_open: dict[ControlConnection, None] = {}
        self._retry = RetryGate(
            limits.retry, self._new_conn_bucket, stats, lambda: len(self._half_open)
        )
        #: The fleet directory (None: this relay answers lookups for its own clients only).
        self.fleet: FleetLink | None = None
        #: SEND frames that arrived right behind their sender's RelayRegister (``.early``).
        self.early = EarlyFrames(stats)

    def _quic_config(self) -> QuicConfiguration:
        cfg = QuicConfiguration(
            is_client=False,
            alpn_protocols=[RELAY_ALPN],
            idle_timeout=self.limits.idle_timeout,
            # control streams carry a few small messages; bound what a client can make us buffer
            max_data=64 * 1024,
            max_stream_data=32 * 1024,
        )
        return apply_identity(cfg, self.identity)

    def accept(self, data: bytes, addr: Address, *, local: Address) -> None:
        """A QUIC packet from an unknown connection: a new control connection, if allowed.

        Junk is recognised before a new-connection token is taken (:mod:`.initial`), and a
        token spent on an Initial that makes no handshake progress is given back, so forged
        Initials cannot drain the bucket that legitimate clients need.
        """
        if not is_initial(data):
            self._refuse("quic_unknown")
            return
        if (
            len(self.connections) >= self.limits.connection_cap
            or self._per_ip[address_prefix(addr[0])] >= self.limits.max_connections_per_ip
        ):
            self._refuse("initials_over_limit")
            return
        # Junk is recognised before it spends a new-connection token or makes any state
        # (issue 12, finding 2): ~30 us per junk Initial here, ~210 us when aioquic built and
        # aborted a connection for it. RFC 9000 section 14.1: a client Initial's datagram is at
        # least 1200 bytes, so a shorter one is junk too.
        if len(data) < MIN_INITIAL_DATAGRAM or not initial_decrypts(data):
            self._refuse("initials_undecryptable")
            return
        header = parse_initial(data)
        now = self._loop.time()
        sock = self._sockets[local]
        if header is None:
            self._refuse("initials_undecryptable")
            return
        # under load: a Retry, no state and no new-connection token until the client proves
        # its address (relay/retry.py)
        admitted = self._retry.screen(header, addr, now, lambda p: sock.sendto(p, addr))
        if admitted is None:
            return
        odcid, retry_scid = admitted
        if not self._new_conn_bucket.take(now):
            self._refuse("initials_over_rate")
            return
        ctl = ControlConnection(addr, local)
        self._add_control(ctl)
        sent = 0

        def transmit(payload: bytes, dest: Address) -> None:
            nonlocal sent
            sent += 1
            sock.sendto(payload, dest)

        kw: dict[str, object] = {
            "on_event": functools.partial(self._on_control_event, ctl),
            "mux": self._muxes[local],
            "max_receive_buffer": CONTROL_RECEIVE_BUFFER,
        }
        try:
            if retry_scid is None:
                driver = ControlDriver.server(self._quic_config(), data, transmit, addr, **kw)
            else:
                # as aioquic's asyncio server does after a Retry (RFC 9000 section 7.3)
                conn = QuicConnection(
                    configuration=self._quic_config(),
                    original_destination_connection_id=odcid,
                    retry_source_connection_id=retry_scid,
                )
                driver = ControlDriver(conn, transmit, addr, extra_cids=(retry_scid,), **kw)  # type: ignore[arg-type]
                driver.datagram_received(data)
        except Exception:
            log.exception("cannot accept a control connection from %s:%d", *addr)
            self._discard_control(ctl)
            self._new_conn_bucket.refund()
            self._refuse("initials_failed")
            return
        assert isinstance(driver, ControlDriver)
        if driver.closed or not sent:
            # refused during the first Initial (e.g. wrong ALPN), or it decrypted but carried
            # nothing to answer: hold no state for it, and give its token back
            driver.abort()
            self._discard_control(ctl)
            self._new_conn_bucket.refund()
            self._refuse("initials_no_progress")
            return
        ctl.driver = driver
        driver.on_address_change = functools.partial(self._on_address_change, ctl)
        driver.set_stream_handler(functools.partial(self._on_stream, ctl))
        ctl.timer = self._loop.call_later(
            self.limits.register_timeout, self._register_deadline, ctl
        )
        self._stats["connections_accepted"] += 1

    def _refuse(self, why: str) -> None:
        """Count a dropped new-connection packet: in total and by reason (GLOBAL_STAT_KEYS)."""
        self._stats["connections_refused"] += 1
        self._stats[why] += 1

    def _add_control(self, ctl: ControlConnection) -> None:
        self.connections[ctl] = None
        self._half_open[ctl] = None
        self._per_ip[ctl.ip] += 1

    def _discard_control(self, ctl: ControlConnection) -> None:
        self._half_open.pop(ctl, None)
        if ctl in self.connections:
            del self.connections[ctl]
            self._per_ip[ctl.ip] -= 1
            if self._per_ip[ctl.ip] <= 0:
                del self._per_ip[ctl.ip]

    def _on_control_event(self, ctl: ControlConnection, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.forget(ctl)
        elif isinstance(event, HandshakeCompleted) and ctl.driver is not None:
            ctl.token = derive_frame_token(channel_binding(ctl.driver.connection))
            self.early.expect(ctl.address, ctl.token, ctl)

    def _register_deadline(self, ctl: ControlConnection) -> None:
        ctl.timer = None
        if ctl.registration is None and ctl.driver is not None:
            ctl.driver.close(CLOSE_REGISTER_TIMEOUT, "no registration")

    def _on_address_change(self, ctl: ControlConnection, addr: Address) -> None:
        self.early.forget(ctl.address, ctl)  # (before registering: its early frames are lost)
        ctl.address = addr
        reg = ctl.registration
        if reg is None:
            return
        for old in self.registry.move(reg, addr):
            self._displaced(old)
        self._stats["registrations_moved"] += 1

    def forget(self, ctl: ControlConnection) -> None:
        """The control connection is gone: its registration ends; release everything."""
        self._discard_control(ctl)
        self.early.forget(ctl.address, ctl)
        if ctl.timer is not None:
            ctl.timer.cancel()
            ctl.timer = None
        if ctl.task is not None and not ctl.task.done():
            ctl.task.cancel()
        reg, ctl.registration = ctl.registration, None
        if reg is not None and self.registry.remove(reg):
            self._stats["clients_forgotten"] += 1
            if self.fleet is not None and not reg.visitor:
                self.fleet.unregistered(reg)
            log.info("relay: %s at %s:%d unregistered", reg.peer_id.short, *reg.address)

    def _displaced(self, reg: Registration) -> None:
        """``reg`` was replaced by a newer registration: close its control connection."""
        self._stats["registrations_replaced"] += 1
        old = reg.owner
        if isinstance(old, ControlConnection):
            old.registration = None
            if old.driver is not None:
                old.driver.close(CLOSE_REPLACED, "registration replaced")

    def _on_stream(
        self, ctl: ControlConnection, reader: asyncio.StreamReader, writer: object
    ) -> None:
        unidirectional = isinstance(writer, QuicStreamWriter) and bool(writer.stream_id & 0x2)
        if ctl.stream_seen or unidirectional or not isinstance(writer, QuicStreamWriter):
            # one control stream per connection; more is a protocol violation
            if ctl.driver is not None:
                ctl.driver.close(CLOSE_PROTOCOL, "one control stream only")
            return
        ctl.stream_seen = True
        ctl.task = self._loop.create_task(self._serve_control(ctl, reader, writer))

    async def _serve_control(
        self, ctl: ControlConnection, reader: asyncio.StreamReader, writer: QuicStreamWriter
    ) -> None:
        try:
            while True:
                try:
                    msg = await read_message(reader)
                except SignalError as exc:
                    await self._reply(
                        writer, RelayErrorMsg(code=RELAY_BAD_REQUEST, reason=str(exc)[:200])
                    )
                    raise ConnectionAbortedError(str(exc)) from None
                if msg is None:
                    break
                if isinstance(msg, RelayRegister):
                    reply = self._register(ctl, msg)
                    if self.fleet is not None and isinstance(reply, RelayRegistered):
                        await self.fleet.flush(DIRECTORY_TIMEOUT)  # in the directory first
                elif isinstance(msg, RelayLookup):
                    reply = await self._lookup(ctl.registration, msg)
                elif isinstance(msg, Ping):
                    ms = int(self._loop.time() * 1000)
                    reply = Pong(nonce=msg.nonce, echo_sent_at_ms=msg.sent_at_ms, sent_at_ms=ms)
                else:
                    reply = RelayErrorMsg(
                        code=RELAY_BAD_REQUEST, reason=f"unexpected {type(msg).__name__}"
                    )
                await self._reply(writer, reply)
        except (ConnectionError, SignalError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relay control connection from %s:%d failed", *ctl.address)
        if ctl.driver is not None and not ctl.driver.closed:
            ctl.driver.close(CLOSE_NORMAL, "control stream ended")

    async def _lookup(self, reg: Registration | None, msg: RelayLookup) -> Message:
        """Where ``msg.peer_id`` is registered, within the client's lookup budget.

        Over budget the answer is ``RelayError`` 429, which clients already raise as
        :class:`~punchthrough.relay.RelayError` ("relay refused lookup: 429 ..."); the control
        connection stays up, since a caller looping too fast is not a protocol violation.
        """
        if reg is None:
            return RelayErrorMsg(code=RELAY_UNAUTHORIZED, reason="register first")
        if not reg.limiter.lookups.take(self._loop.time()):
            self._stats["lookups_rate_limited"] += 1
            reg.stats["lookups_rate_limited"] += 1
            return RelayErrorMsg(code=RELAY_RATE_LIMITED, reason="lookup rate limited")
        self._stats["lookups"] += 1
        reg.stats["lookups"] += 1
        if self.fleet is None:
            locs = self.registry.locate(msg.peer_id)
        else:
            try:
                locs = await self.fleet.locate(msg.peer_id)
            except DirectoryUnavailable as exc:
                return RelayErrorMsg(code=RELAY_UNAVAILABLE, reason=str(exc)[:200])
        return RelayLookupResult(
            peer_id=msg.peer_id,
            found=bool(locs),
            relays=tuple(RelayAddress(host=h, port=p) for h, p in locs),
        )

    async def _reply(self, writer: QuicStreamWriter, msg: Message) -> None:
        await write_message(writer, msg, timeout=REPLY_TIMEOUT)

    def _register(self, ctl: ControlConnection, msg: RelayRegister) -> Message:
        driver = ctl.driver
        if driver is None:
            return RelayErrorMsg(code=RELAY_BAD_REQUEST, reason="no connection")
        try:
            binding = channel_binding(driver.connection)
            verify_exporter(msg.peer_id, binding, msg.signature, context=RELAY_REGISTER_CONTEXT)
        except ChannelBindingUnavailable:
            self._stats["registrations_refused"] += 1
            return RelayErrorMsg(code=RELAY_BAD_REQUEST, reason="handshake not complete")
        except BadSignature:
            self._stats["registrations_refused"] += 1
            return RelayErrorMsg(
                code=RELAY_UNAUTHORIZED, reason="signature does not prove that peer id"
            )
        current = ctl.registration
        if current is not None and current.peer_id != msg.peer_id:
            self._stats["registrations_refused"] += 1
            return RelayErrorMsg(
                code=RELAY_CONFLICT, reason="this connection is registered as another peer"
            )
        if current is None:
            existing = self.registry.by_peer(msg.peer_id.raw)
            if existing is None and len(self.registry) >= self.limits.max_clients:
                self._stats["registrations_refused"] += 1
                return RelayErrorMsg(code=RELAY_RATE_LIMITED, reason="relay is full")
            reg = Registration(
                peer_id=msg.peer_id,
                address=ctl.address,
                local=ctl.local,
                registered_at=self._loop.time(),
                limiter=ClientLimiter(self.limits, self._loop.time()),
                frame_token=ctl.token or derive_frame_token(binding),
                owner=ctl,
                visitor=msg.visitor,
            )
            for old in self.registry.add(reg):
                self._displaced(old)
            ctl.registration = reg
            self.early.release(ctl.address, ctl)  # what it sent right behind RelayRegister
            self._half_open.pop(ctl, None)
            if ctl.timer is not None:
                ctl.timer.cancel()
                ctl.timer = None
            self._stats["registrations"] += 1
            log.info("relay: %s registered from %s:%d", msg.peer_id.short, *ctl.address)
        registration = ctl.registration
        assert registration is not None  # made just above, or this connection's earlier one
        registration.visitor = registration.visitor and msg.visitor  # a visit may become home
        if self.fleet is not None and not registration.visitor:
            self.fleet.registered(registration)  # published (relay.fleet), not for visitors
        return RelayRegistered(
            peer_id=msg.peer_id,
            observed_ip=ctl.address[0],
            observed_port=ctl.address[1],
            keepalive_ms=self.limits.keepalive_ms,
            frame_token=registration.frame_token,
        )

    async def close(self, code: RelayCloseCode = CLOSE_SHUTDOWN) -> None:
        """CONNECTION_CLOSE on every control connection, a grace period, then release all."""
        reason = "relay draining" if code == RelayCloseCode.DRAINING else "relay shutting down"
        try:
            controls = list(self.connections)
            drivers = [c.driver for c in controls if c.driver is not None]
            for d in drivers:
                d.close(code, reason)
            if drivers and self.limits.shutdown_grace > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.limits.shutdown_grace):
                        await asyncio.gather(*(d.wait_closed() for d in drivers))
        finally:
            for ctl in list(self.connections):
                if ctl.driver is not None:
                    ctl.driver.abort()
                self.forget(ctl)
            tasks = [c.task for c in controls if c.task is not None]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
