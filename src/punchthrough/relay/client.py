"""The relay client: register with a relay through an endpoint's shared socket, send and
receive DATA frames.

The control connection (QUIC, ALPN ``punchthrough-relay/1``) runs through the caller's
:class:`~punchthrough.transport.demux.DatagramMux`, so it leaves from the same socket (the same
NAT mapping) as the DATA frames; the relay binds the registration to that mapping.

Two keepalives, for two different lifetimes:

- QUIC PINGs every ``keepalive_ms`` (told by the relay, 10 s) keep the *control connection*
  alive (the relay's 30 s QUIC idle timeout);
- a STUN Binding request every ``nat_keepalive`` keeps our *NAT's binding* of the relay flow
  alive (:mod:`.nat_keepalive`). Off unless asked for; an :class:`~punchthrough.endpoint.
  Endpoint` always asks (``EndpointConfig.nat_keepalive``, 2 s; the rule is in
  ``punchthrough.traversal.monitor``). The answer says where the relay sees us now: at a new
  address (our NAT rebooted or rebound, our network changed) the client sends a QUIC PING at
  once, so the registration follows (validated QUIC migration), and tells its owner
  (:meth:`RelayClient.set_network_handler`); so does an answer after unanswered keepalives (the
  network came back).

All waits are bounded and all timing comes from the running loop (simulator compatible).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from hmac import compare_digest
from typing import Final

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent

from punchthrough.identity import Identity, PeerId, apply_identity
from punchthrough.netio import Address
from punchthrough.relay import control_client
from punchthrough.relay.errors import RelayClosed, RelayError, RelayTimeout
from punchthrough.relay.frames import (
    DATA_HEADER_LENGTH,
    FRAME_DATA,
    FRAME_NOTICE,
    MAX_DATA_FRAME,
    NOTICE_LENGTH,
    PEER_ID_BYTES,
    PEER_ID_END,
    RELAY_ALPN,
    encode_send,
)
from punchthrough.relay.nat_keepalive import NatKeepalive
from punchthrough.signal import RelayLookup
from punchthrough.transport.demux import DatagramMux
from punchthrough.transport.quic import QuicDriver, QuicStreamWriter

log = logging.getLogger(__name__)

#: Client side of the QUIC idle timeout; the effective one is the smaller of ours and the
#: relay's (RFC 9000 section 10.1). We PING at the relay's keepalive_ms or a third of this.
DEFAULT_IDLE_TIMEOUT: Final = 30.0
#: Peer ids seen in received frames, cached to avoid building one object per frame.
_PEER_CACHE_SIZE: Final = 1024

DataReceiver = Callable[[PeerId, bytes], None]
NoticeHandler = Callable[[int, PeerId], None]
#: Called with a reason when the relay sees us at a new address or answers again.
NetworkHandler = Callable[[str], None]


class RelayClient:
    """A registration with one relay. Build with :meth:`connect`; end with :meth:`close`."""

    def __init__(
        self,
        mux: DatagramMux,
        relay_addr: Address,
        identity: Identity,
        idle_timeout: float,
        nat_keepalive: float | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._mux = mux
        self._sock = mux.sock
        self.relay_address: Address = relay_addr
        self._identity = identity
        self._idle_timeout = idle_timeout
        self._driver: QuicDriver | None = None
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        self._closing = False
        self._keepalive: asyncio.TimerHandle | None = None
        self._keepalive_interval = idle_timeout / 3
        self._ping_uid = 0
        self._mapped: Address | None = None
        self._network_handler: NetworkHandler | None = None
        self._receiver: DataReceiver | None = None
        self._notice_handler: NoticeHandler | None = None
        self._peers: dict[bytes, PeerId] = {}
        self._observed: Address | None = None
        #: What our SEND frames carry and the relay's DATA and NOTICE frames to us must carry:
        #: derived from the control connection's channel binding at the handshake, then the
        #: relay's ``RelayRegistered.frame_token`` (the same; an older relay chose one at random).
        self._frame_token = b""
        self._control: tuple[asyncio.StreamReader, QuicStreamWriter] | None = None
        self._stream: tuple[asyncio.StreamReader, QuicStreamWriter] | None = None  # registering
        #: The relay's answer to our registration: set when registered, failed when refused,
        #: timed out or closed first (``connect(pipelined=True)`` returns before it).
        self._registered: asyncio.Future[None] = self._loop.create_future()
        self._answer_task: asyncio.Task[None] | None = None
        self._control_lock = asyncio.Lock()
        #: Why the relay connection ended (None while it is up or if we closed it): for people.
        self.close_reason: str | None = None
        #: The relay's application close code when it closed the connection (a
        #: :class:`RelayCloseCode` value; any int from a newer relay): for code. None while up,
        #: if we closed it, or if it ended otherwise (idle timeout, transport error).
        self.close_code: int | None = None
        #: The relay's identity (from its certificate), known after the handshake.
        self.relay_peer_id: PeerId | None = None
        #: Registered as a visitor of a relay fleet (``connect(visitor=True)``).
        self.visitor = False
        self._stats: Counter[str] = Counter(
            dict.fromkeys(
                (
                    "frames_sent",
                    "bytes_sent",
                    "frames_received",
                    "bytes_received",
                    "notices_received",
                    "malformed",
                    "dropped_closed",
                    "dropped_no_receiver",
                    "send_errors",
                    "keepalives",
                    "nat_keepalives",
                    "nat_keepalives_unanswered",
                    "rebindings",
                ),
                0,
            )
        )
        #: STUN keepalive of the NAT binding (None: off).
        self._nat: NatKeepalive | None = None
        if nat_keepalive is not None:
            self._nat = NatKeepalive(
                mux, relay_addr, nat_keepalive, self._stats, self._on_nat_answer
            )

    @classmethod
    async def connect(
        cls,
        mux: DatagramMux,
        relay_addr: Address,
        identity: Identity,
        *,
        timeout: float = 5.0,
        relay_peer_id: PeerId | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        nat_keepalive: float | None = None,
        visitor: bool = False,
        pipelined: bool = False,
    ) -> RelayClient:
        """Open the control connection through ``mux``, register, return when registered.

        ``relay_peer_id`` pins the relay's identity (optional: relays are usually known by
        address only; the data plane is end-to-end encrypted either way). Raises
        :class:`RelayTimeout`, :class:`RelayRegistrationError` (the relay said no) or
        :class:`RelayError`/:class:`RelayClosed`. ``nat_keepalive``: seconds between STUN
        keepalives of our NAT's binding (``None``: none, only the QUIC PINGs every
        ``keepalive_ms``). ``visitor``: a relay fleet's visit (not published as our home;
        :meth:`make_home` changes that).

        ``pipelined`` (issue 17): return once ``RelayRegister`` is sent, a round trip sooner;
        :meth:`send` works at once (the token comes from the handshake; the relay holds frames
        that overtake the registration, ``relay.early``). The answer comes in the background,
        within ``timeout`` (:meth:`wait_registered`); a refusal or timeout closes the client.
        """
        if nat_keepalive is not None and nat_keepalive <= 0:
            raise ValueError("nat_keepalive must be positive")
        self = cls(mux, relay_addr, identity, idle_timeout, nat_keepalive)
        self.visitor = visitor
        deadline = self._loop.time() + timeout
        late = RelayTimeout(
            f"relay {relay_addr[0]}:{relay_addr[1]} did not register us within {timeout} s"
        )
        try:
            async with asyncio.timeout_at(deadline):
                await self._start_registration(relay_peer_id)
                if not pipelined:
                    await self._finish_registration()
        except TimeoutError:
            self._teardown("registration timed out")
            raise late from None
        except BaseException:
            self._teardown("registration failed")
            raise
        if pipelined:
            self._answer_task = self._loop.create_task(self._await_answer(deadline, late))
        return self

    async def _await_answer(self, deadline: float, late: RelayTimeout) -> None:
        """The background half of a pipelined registration (see :meth:`connect`)."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._finish_registration()
        except (TimeoutError, RelayError, OSError) as exc:
            why = late if isinstance(exc, TimeoutError) else exc
            if not self._registered.done():
                self._registered.set_exception(why)
            self._teardown(f"registration failed: {why}")

    async def wait_registered(self) -> None:
        """Return once registered; raise why not (as :meth:`connect`; closed: RelayClosed)."""
        await asyncio.shield(self._registered)

    async def _start_registration(self, relay_peer_id: PeerId | None) -> None:
        """Handshake, then ``RelayRegister`` sent; from here on we may send frames."""
        cfg = QuicConfiguration(
            is_client=True, alpn_protocols=[RELAY_ALPN], idle_timeout=self._idle_timeout
        )
        apply_identity(cfg, self._identity)
        self._mux.add_relay_source(self.relay_address, self._on_datagram)
        self._driver = QuicDriver.client(
            cfg, self._sock.sendto, self.relay_address, on_event=self._on_event, mux=self._mux
        )
        await asyncio.shield(self._handshake)
        conn = self._driver.connection
        self.relay_peer_id = control_client.relay_peer_id(conn, relay_peer_id)
        _, writer = self._stream = self._driver.open_stream()
        self._frame_token = await control_client.send_register(
            writer, conn, self._identity, self._loop.time, visitor=self.visitor
        )

    async def _finish_registration(self) -> None:
        """The relay's answer to ``RelayRegister``: registered (or why not)."""
        assert self._stream is not None
        reader, writer = self._stream
        answer = await control_client.receive(reader)
        if answer is None:
            raise RelayClosed(f"relay closed the control stream ({self.close_reason or 'eof'})")
        reply = control_client.registered(answer, self._identity)
        self._control = (reader, writer)
        self._observed = (reply.observed_ip, reply.observed_port)
        self._mapped = self._observed
        self._keepalive_interval = min(reply.keepalive_ms / 1000, self._idle_timeout / 3)
        self._frame_token = reply.frame_token
        self._arm_keepalive()
        if self._nat is not None:
            self._nat.start()
        if not self._registered.done():
            self._registered.set_result(None)

    async def make_home(self, *, timeout: float = 5.0) -> None:
        """A visit becomes our home: register again on this connection, not as a visitor."""
        if self._control is None or self._driver is None or self.closed:
            raise RelayClosed("not connected to the relay")
        reader, writer = self._control
        async with self._control_lock:
            try:
                async with asyncio.timeout(timeout):
                    answer = await control_client.register(
                        reader, writer, self._driver.connection, self._identity, self._loop.time
                    )
            except TimeoutError:
                raise RelayTimeout(f"relay did not answer within {timeout} s") from None
        if answer is None:
            raise RelayClosed("relay closed the control stream")
        control_client.registered(answer, self._identity)
        self.visitor = False

    async def lookup(self, peer_id: PeerId, *, timeout: float = 5.0) -> tuple[Address, ...]:
        """Relay addresses where ``peer_id`` is registered, as this relay knows (empty: none).

        The seam for several relays: today a relay knows only its own clients.
        """
        if self._control is None or self.closed:
            raise RelayClosed("not connected to the relay")
        reader, writer = self._control
        async with self._control_lock:
            try:
                async with asyncio.timeout(timeout):
                    reply = await control_client.request(
                        reader, writer, RelayLookup(peer_id=peer_id)
                    )
            except TimeoutError:
                raise RelayTimeout(f"relay did not answer a lookup within {timeout} s") from None
        return control_client.lookup_result(reply, peer_id)

    # -- QUIC events, keepalive ----------------------------------------------------------------
    def _on_event(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            if not self._handshake.done():
                self._handshake.set_result(None)
        elif isinstance(event, ConnectionTerminated):
            reason = event.reason_phrase or f"error 0x{event.error_code:x}"
            if not self._handshake.done():
                self._handshake.set_exception(RelayClosed(f"relay refused connection: {reason}"))
            if not self._closing:
                self.close_reason = reason
                if event.frame_type is None:  # an application CONNECTION_CLOSE (0x1d)
                    self.close_code = event.error_code
                log.info("relay %s:%d connection ended: %s", *self.relay_address, reason)
            self._teardown(reason, from_driver=True)

    def _arm_keepalive(self) -> None:
        if not self.closed:
            self._keepalive = self._loop.call_later(self._keepalive_interval, self._send_keepalive)

    def _send_keepalive(self) -> None:
        self._keepalive = None
        if self.closed:
            return
        self.ping()
        self._stats["keepalives"] += 1
        self._arm_keepalive()

    def ping(self) -> None:
        """A QUIC PING on the control connection now. After our address changed this is what
        moves the registration (the relay follows a validated QUIC migration)."""
        driver = self._driver
        if driver is None or self.closed:
            return
        self._ping_uid += 1
        driver.connection.send_ping(self._ping_uid)
        driver.transmit()

    # -- NAT keepalive (STUN) ------------------------------------------------------------------
    def _on_nat_answer(self, address: Address, misses: int) -> None:
        """The relay answered a keepalive: it sees us at ``address``."""
        old, self._mapped = self._mapped, address
        if old is not None and address != old:
            self._stats["rebindings"] += 1
            self.ping()  # move the registration to where we are now
            self._notify(
                f"relay {self.relay_address[0]}:{self.relay_address[1]} sees us at "
                f"{address[0]}:{address[1]} (was {old[0]}:{old[1]})"
            )
        elif misses:
            self._notify(
                f"relay {self.relay_address[0]}:{self.relay_address[1]} answers again after "
                f"{misses} unanswered keepalive(s)"
            )

    def _notify(self, reason: str) -> None:
        log.info("%s", reason)
        handler = self._network_handler
        if handler is not None:
            try:
                handler(reason)
            except Exception:
                log.exception("relay network handler failed")

    def set_network_handler(self, cb: NetworkHandler | None) -> None:
        """``cb(reason)`` when the relay sees us at a new address, or answers again after
        unanswered keepalives (the owner re-gathers its candidates)."""
        self._network_handler = cb

    async def refresh(self, timeout: float = 1.0) -> Address | None:
        """A STUN keepalive now; returns where the relay sees us (``None``: no answer within
        ``timeout``, or keepalives are off). Any change is also reported to the handler."""
        if self.closed or self._nat is None:
            return None
        return await self._nat.refresh(timeout)

    # -- data plane ------------------------------------------------------------------------------
    def send(self, dest: PeerId, payload: bytes) -> None:
        """Send one packet to ``dest`` via the relay (dropped and counted once closed).

        Raises :class:`~punchthrough.relay.errors.RelayFrameError` for an empty payload or one
        over ``MAX_RELAY_PAYLOAD`` (a caller bug, not a network condition).
        """
        if self.closed:
            self._stats["dropped_closed"] += 1
            return
        frame = encode_send(dest, self._frame_token, payload)
        try:
            self._sock.sendto(frame, self.relay_address)
        except OSError:
            self._stats["send_errors"] += 1
            return
        self._stats["frames_sent"] += 1
        self._stats["bytes_sent"] += len(payload)

    def set_receiver(self, cb: DataReceiver | None) -> None:
        self._receiver = cb

    def set_notice_handler(self, cb: NoticeHandler | None) -> None:
        self._notice_handler = cb

    def _peer(self, raw: bytes) -> PeerId:
        peer = self._peers.get(raw)
        if peer is None:
            if len(self._peers) >= _PEER_CACHE_SIZE:
                self._peers.clear()
            peer = self._peers[raw] = PeerId(raw)
        return peer

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        """A relay frame from the relay's address: used only if it carries our frame token
        (anyone who knows our public mapping can send from the relay's address)."""
        n = len(data)
        kind = data[0] if n else -1
        if kind == FRAME_DATA and DATA_HEADER_LENGTH < n <= MAX_DATA_FRAME:
            if not compare_digest(data[PEER_ID_END:DATA_HEADER_LENGTH], self._frame_token):
                self._stats["dropped_bad_token"] += 1
                return
            self._stats["frames_received"] += 1
            self._stats["bytes_received"] += n - DATA_HEADER_LENGTH
            receiver = self._receiver
            if receiver is None:
                self._stats["dropped_no_receiver"] += 1
                return
            receiver(self._peer(data[1:PEER_ID_END]), data[DATA_HEADER_LENGTH:])
        elif kind == FRAME_NOTICE and n == NOTICE_LENGTH:
            if not compare_digest(data[2 + PEER_ID_BYTES :], self._frame_token):
                self._stats["dropped_bad_token"] += 1
                return
            self._stats["notices_received"] += 1
            handler = self._notice_handler
            if handler is not None:
                handler(data[1], self._peer(data[2 : 2 + PEER_ID_BYTES]))
        else:
            self._stats["malformed"] += 1

    # -- state -----------------------------------------------------------------------------------
    @property
    def frame_token(self) -> bytes:
        """What our SEND frames carry (for tools that build frames themselves)."""
        return self._frame_token

    @property
    def observed_address(self) -> Address:
        """Our address as the relay sees it (the NAT mapping of the shared socket)."""
        if self._observed is None:
            raise RelayError("not registered")
        return self._observed

    @property
    def mapped_address(self) -> Address:
        """Our address as the relay sees it now (the registration's, updated by keepalives)."""
        if self._mapped is None:
            raise RelayError("not registered")
        return self._mapped

    @property
    def peer_id(self) -> PeerId:
        return self._identity.peer_id

    @property
    def transport(self) -> str:
        """What carries this registration: ``"udp"``, or a stream link's kind (``"tls"``,
        ``"websocket"``; ``relay.stream.link``)."""
        return str(getattr(self._sock, "kind", "udp"))

    @property
    def keepalive_interval(self) -> float:
        return self._keepalive_interval

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    @property
    def closed(self) -> bool:
        return self._closing or self._closed_fut.done()

    async def wait_closed(self) -> None:
        """Return when the relay connection is gone (closed by us, the relay, or idle)."""
        await asyncio.shield(self._closed_fut)

    async def close(self) -> None:
        """Send CONNECTION_CLOSE, drop our mux registrations. Idempotent, never blocks long."""
        self._teardown(None)
        await asyncio.sleep(0)

    def _teardown(self, reason: str | None, *, from_driver: bool = False) -> None:
        if self._closed_fut.done():
            return
        self._closing = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._nat is not None:
            self._nat.stop()
        self._mux.remove_relay_source(self.relay_address)
        driver = self._driver
        if driver is not None and not from_driver:
            # CONNECTION_CLOSE goes out now; aborting then releases the CIDs without waiting
            # out the closing period (the relay forgets us at once, or at its idle timeout if
            # the close is lost).
            driver.close(0, reason or "client closing")
            driver.abort()
        self._closed_fut.set_result(None)
        if self._answer_task is not None and self._answer_task is not asyncio.current_task():
            self._answer_task.cancel()  # (a no-op once it is done)
        if not self._registered.done():
            self._registered.set_exception(RelayClosed(reason or "closed"))
            self._registered.exception()  # retrieved: no "never retrieved" warning
        if not self._handshake.done():
            self._handshake.set_exception(RelayClosed(reason or "closed"))
            self._handshake.exception()  # retrieved: no "never retrieved" warning
