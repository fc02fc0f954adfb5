"""The relay server: STUN, authenticated registration over QUIC, opaque frame forwarding.

One UDP socket per listen address, each demultiplexed by first byte
(:class:`~punchthrough.transport.demux.DatagramMux`):

* STUN (0-3) -> :class:`~punchthrough.stun.StunServerCore` (RFC 5780 with ``alt_ip``: then the
  relay also binds the alternate IP/port sockets, which answer STUN only);
* relay frames (16-19) -> forwarding (primary sockets only);
* QUIC (64-127, 192-255) -> control connections: a new Initial creates a server connection
  (ALPN ``punchthrough-relay/1``, the relay's identity certificate).

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
* DATA frames are accepted only from a registered address; the source peer id stamped on the
  forwarded frame is the registration's. Payloads are never decrypted or inspected.
* A registration ends when its control connection closes or idles out (``idle_timeout``;
  clients PING every ``keepalive_ms`` = idle/3).
* Limits per client (packets and bytes token buckets) and relay-wide (new connections, client
  count). NOTICE replies go only to registered senders, at most one per dropped frame (never
  amplifying: a NOTICE is 34 bytes, a DATA frame at least 34) and rate limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent

from punchthrough.identity import (
    RELAY_REGISTER_CONTEXT,
    BadSignature,
    ChannelBindingUnavailable,
    Identity,
    PeerId,
    apply_identity,
    channel_binding,
    verify_exporter,
)
from punchthrough.netio import Address, DatagramSocket, Network
from punchthrough.relay.close import RelayCloseCode
from punchthrough.relay.frames import (
    DATA_HEADER_LENGTH,
    FRAME_DATA,
    MAX_DATA_FRAME,
    NOTICE_RATE_LIMITED,
    NOTICE_UNKNOWN_DESTINATION,
    RELAY_ALPN,
    encode_notice,
)
from punchthrough.relay.limits import ClientLimiter, RelayLimits, TokenBucket
from punchthrough.relay.registry import LocalRegistry, Registration
from punchthrough.signal import (
    RELAY_BAD_REQUEST,
    RELAY_CONFLICT,
    RELAY_RATE_LIMITED,
    RELAY_UNAUTHORIZED,
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
from punchthrough.stun import StunServerCore
from punchthrough.transport.demux import DatagramMux
from punchthrough.transport.quic import (
    QuicDriver,
    QuicStreamWriter,
    is_initial,
    validated_peer_address,
)

log = logging.getLogger(__name__)

#: QUIC application error codes on control connections (defined in :mod:`.close`).
CLOSE_NORMAL: Final = RelayCloseCode.NORMAL
CLOSE_REPLACED: Final = RelayCloseCode.REPLACED
CLOSE_PROTOCOL: Final = RelayCloseCode.PROTOCOL
CLOSE_REGISTER_TIMEOUT: Final = RelayCloseCode.REGISTER_TIMEOUT
CLOSE_SHUTDOWN: Final = RelayCloseCode.SHUTDOWN
#: Bounded write of a control reply (the client's flow control is never near full).
REPLY_TIMEOUT: Final = 5.0
#: Bind attempts when a port 0 listen address needs port+1 free on both IPs (RFC 5780 mode).
MAX_BIND_ATTEMPTS: Final = 32
MAX_PORT: Final = 0xFFFF

#: Test-only hook: transform (or drop, with None) each forwarded payload.
PayloadFilter = Callable[[bytes], bytes | None]

GLOBAL_STAT_KEYS: Final = (
    "frames_in",  # DATA frames from registered clients, well-formed
    "frames_out",  # DATA frames forwarded
    "bytes_in",  # payload bytes of frames_in
    "bytes_out",  # payload bytes forwarded
    "dropped_unregistered",  # relay frames from an address with no registration
    "dropped_unknown_dest",  # destination peer id not registered here
    "dropped_rate",  # per-client packet/byte limit
    "dropped_filter",  # payload_filter returned None (tests)
    "malformed",  # relay-range datagrams from registered clients that are not a valid DATA
    "notices_sent",
    "send_errors",
    "connections_accepted",
    "connections_refused",  # Initial dropped: limits, or not a valid Initial
    "registrations",
    "registrations_refused",
    "registrations_replaced",
    "registrations_moved",  # NAT rebinding followed by validated QUIC migration
    "clients_forgotten",  # registrations ended (closed or idle)
    "stun",
)


def _norm_ip(ip: str) -> str:
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


def _norm(addr: Address) -> Address:
    return (_norm_ip(addr[0]), addr[1])


#: Undelivered stream data a control connection may make us hold (QuicDriver closes it past
#: this). Control messages are a few hundred bytes (signal.MAX_FRAME_SIZE is 16 KiB).
CONTROL_RECEIVE_BUFFER = 64 * 1024


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A registered client, as :meth:`RelayServer.peers` reports it."""

    peer_id: PeerId
    address: Address
    relay_address: Address
    registered_at: float
    stats: dict[str, int]


class _ControlDriver(QuicDriver):
    """A QuicDriver that reports when the client's validated address changes (migration)."""

    on_address_change: Callable[[Address], None] | None = None

    def datagram_received(self, data: bytes, addr: Address | None = None) -> None:
        super().datagram_received(data, addr)
        if self.on_address_change is None or self.closed:
            return
        addr0 = validated_peer_address(self.connection)
        if addr0 is not None and addr0 != self.peer_address:
            self.peer_address = addr0
            self.on_address_change(addr0)


class _Control:
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
    )

    def __init__(self, address: Address, local: Address) -> None:
        self.address = address
        self.ip = address[0]  # the IP counted against max_connections_per_ip
        self.local = local
        self.driver: _ControlDriver | None = None
        self.registration: Registration | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stream_seen = False


class RelayServer:
    """A running relay. Build with :meth:`start`; stop with :meth:`close`."""

    def __init__(
        self,
        sockets: dict[Address, DatagramSocket],
        primaries: Sequence[Address],
        stun: StunServerCore,
        identity: Identity,
        limits: RelayLimits,
        payload_filter: PayloadFilter | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._primaries = list(primaries)
        self._stun = stun
        self.identity = identity
        self.limits = limits
        self._payload_filter = payload_filter
        self.registry = LocalRegistry()
        self._stats: Counter[str] = Counter(dict.fromkeys(GLOBAL_STAT_KEYS, 0))
        self._controls: set[_Control] = set()
        self._per_ip: Counter[str] = Counter()
        self._new_conn_bucket = TokenBucket(
            limits.new_connections_per_second, limits.new_connection_burst, self._loop.time()
        )
        self._closing = False
        self._closed = False
        self._muxes: dict[Address, DatagramMux] = {}
        for local, sock in sockets.items():
            mux = DatagramMux(sock)
            self._muxes[local] = mux
            mux.add_stun_handler(functools.partial(self._on_stun, local=local))
            if local in self._primaries:
                mux.set_relay_handler(self._make_relay_handler(local, sock))
                mux.set_new_quic_handler(functools.partial(self._on_new_quic, local=local))

    # -- construction ----------------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        network: Network,
        listen: Sequence[Address],
        identity: Identity | None = None,
        alt_ip: str | None = None,
        limits: RelayLimits | None = None,
        *,
        payload_filter: PayloadFilter | None = None,
        software: str | None = None,
    ) -> RelayServer:
        """Bind every address and start serving.

        ``identity``: the relay's certificate key (an ephemeral one is generated if None).
        ``alt_ip``: RFC 5780 STUN on {listen IP, alt_ip} x {port, port + 1}; relay service runs
        on the listen addresses only. ``payload_filter`` is a TEST-ONLY hook applied to every
        forwarded payload (return None to drop it), used to prove end-to-end authentication.
        """
        if not listen:
            raise ValueError("a relay needs at least one listen address")
        listen = [_norm(a) for a in listen]
        if alt_ip is not None and len({ip for ip, _ in listen}) != 1:
            raise ValueError("RFC 5780 mode needs exactly one primary IP among listen addresses")
        attempts = MAX_BIND_ATTEMPTS if any(p == 0 for _, p in listen) and alt_ip else 1
        last_error: OSError | None = None
        for _ in range(attempts):
            sockets: dict[Address, DatagramSocket] = {}
            try:
                primaries, core = await _bind(network, listen, alt_ip, sockets, software)
                return cls(
                    sockets,
                    primaries,
                    core,
                    identity or Identity.generate(),
                    limits or RelayLimits(),
                    payload_filter,
                )
            except OSError as exc:
                last_error = exc
                for sock in sockets.values():
                    sock.close()
            except BaseException:
                for sock in sockets.values():
                    sock.close()
                raise
        assert last_error is not None
        raise last_error

    # -- public state ----------------------------------------------------------------------
    @property
    def addresses(self) -> list[Address]:
        """Relay (and STUN) service addresses: the bound primary listen addresses."""
        return list(self._primaries)

    @property
    def stun_addresses(self) -> list[Address]:
        """Every address answering STUN (with ``alt_ip``: the RFC 5780 quadruple per port)."""
        return self._stun.addresses

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        out["stun"] = self._stun.stats["requests"]
        out["stun_malformed"] = self._stun.stats["malformed"]
        out["clients"] = len(self.registry)
        out["connections"] = len(self._controls)
        for mux in self._muxes.values():
            out["dropped_first_byte"] = out.get("dropped_first_byte", 0) + mux.stats.get(
                "dropped_first_byte", 0
            )
            out["handler_errors"] = out.get("handler_errors", 0) + mux.stats.get(
                "handler_errors", 0
            )
        return out

    def peers(self) -> list[PeerInfo]:
        return [
            PeerInfo(r.peer_id, r.address, r.local, r.registered_at, dict(r.stats))
            for r in self.registry
        ]

    @property
    def closed(self) -> bool:
        return self._closed

    # -- STUN ------------------------------------------------------------------------------
    def _on_stun(self, data: bytes, addr: Address, *, local: Address) -> bool:
        for payload, from_addr, dest in self._stun.handle(data, addr, local):
            sock = self._sockets.get(from_addr)
            if sock is None or sock.closed:
                self._stats["send_errors"] += 1
                continue
            try:
                sock.sendto(payload, dest)
            except OSError:
                self._stats["send_errors"] += 1
        return True  # the relay is the only STUN speaker on its sockets

    # -- data plane ------------------------------------------------------------------------
    def _make_relay_handler(
        self, local: Address, sock: DatagramSocket
    ) -> Callable[[bytes, Address], None]:
        """The forwarding hot path, as a closure (no attribute lookups per frame)."""
        by_addr = self.registry._by_addr
        by_peer = self.registry._by_peer
        stats = self._stats
        now_fn = self._loop.time
        prefix = bytes([FRAME_DATA])

        def on_frame(data: bytes, addr: Address) -> None:
            src = by_addr.get(addr)
            if src is None:
                stats["dropped_unregistered"] += 1
                return
            n = len(data)
            if n <= DATA_HEADER_LENGTH or n > MAX_DATA_FRAME or data[0] != FRAME_DATA:
                stats["malformed"] += 1
                src.stats["malformed"] += 1
                return
            size = n - DATA_HEADER_LENGTH
            stats["frames_in"] += 1
            stats["bytes_in"] += size
            cstats = src.stats
            cstats["frames_in"] += 1
            cstats["bytes_in"] += size
            now = now_fn()
            dest_raw = data[1:DATA_HEADER_LENGTH]
            if not src.limiter.allow_frame(now, size):
                stats["dropped_rate"] += 1
                cstats["dropped_rate"] += 1
                self._notice(src, NOTICE_RATE_LIMITED, dest_raw, now)
                return
            dest = by_peer.get(dest_raw)
            if dest is None:
                stats["dropped_unknown_dest"] += 1
                cstats["dropped_unknown_dest"] += 1
                self._notice(src, NOTICE_UNKNOWN_DESTINATION, dest_raw, now)
                return
            payload = data[DATA_HEADER_LENGTH:]
            if self._payload_filter is not None:
                filtered = self._payload_filter(payload)
                if not filtered:
                    stats["dropped_filter"] += 1
                    return
                payload = filtered
            out_sock = sock if dest.local == local else self._sockets.get(dest.local, sock)
            try:
                out_sock.sendto(prefix + src.raw + payload, dest.address)
            except OSError:
                stats["send_errors"] += 1
                return
            stats["frames_out"] += 1
            stats["bytes_out"] += size
            dest.stats["frames_out"] += 1
            dest.stats["bytes_out"] += size

        return on_frame

    def _notice(self, reg: Registration, code: int, peer_raw: bytes, now: float) -> None:
        if not reg.limiter.notices.take(now):
            return
        sock = self._sockets.get(reg.local)
        if sock is None or sock.closed:
            return
        try:
            sock.sendto(encode_notice(code, peer_raw), reg.address)
        except OSError:
            self._stats["send_errors"] += 1
            return
        self._stats["notices_sent"] += 1
        reg.stats["notices_sent"] += 1

    # -- control connections -----------------------------------------------------------------
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

    def _on_new_quic(self, data: bytes, addr: Address, *, local: Address) -> None:
        if self._closing:
            return
        if not is_initial(data):
            self._stats["connections_refused"] += 1
            return
        now = self._loop.time()
        if (
            len(self._controls) >= self.limits.max_connections
            or self._per_ip[addr[0]] >= self.limits.max_connections_per_ip
            or not self._new_conn_bucket.take(now)
        ):
            self._stats["connections_refused"] += 1
            return
        ctl = _Control(addr, local)
        self._add_control(ctl)
        sock = self._sockets[local]
        sent = 0

        def transmit(payload: bytes, dest: Address) -> None:
            nonlocal sent
            sent += 1
            sock.sendto(payload, dest)

        try:
            driver = _ControlDriver.server(
                self._quic_config(),
                data,
                transmit,
                addr,
                on_event=functools.partial(self._on_control_event, ctl),
                mux=self._muxes[local],
                max_receive_buffer=CONTROL_RECEIVE_BUFFER,
            )
        except Exception:
            log.exception("cannot accept a control connection from %s:%d", *addr)
            self._discard_control(ctl)
            self._stats["connections_refused"] += 1
            return
        assert isinstance(driver, _ControlDriver)
        if driver.closed or not sent:
            # refused during the first Initial (e.g. wrong ALPN), or the "Initial" did not
            # decrypt (garbage with a valid-looking header): hold no state for it
            driver.abort()
            self._discard_control(ctl)
            self._stats["connections_refused"] += 1
            return
        ctl.driver = driver
        driver.on_address_change = functools.partial(self._on_address_change, ctl)
        driver.set_stream_handler(functools.partial(self._on_stream, ctl))
        ctl.timer = self._loop.call_later(
            self.limits.register_timeout, self._register_deadline, ctl
        )
        self._stats["connections_accepted"] += 1

    def _add_control(self, ctl: _Control) -> None:
        self._controls.add(ctl)
        self._per_ip[ctl.ip] += 1

    def _discard_control(self, ctl: _Control) -> None:
        if ctl in self._controls:
            self._controls.remove(ctl)
            self._per_ip[ctl.ip] -= 1
            if self._per_ip[ctl.ip] <= 0:
                del self._per_ip[ctl.ip]

    def _on_control_event(self, ctl: _Control, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self._forget(ctl)

    def _register_deadline(self, ctl: _Control) -> None:
        ctl.timer = None
        if ctl.registration is None and ctl.driver is not None:
            ctl.driver.close(CLOSE_REGISTER_TIMEOUT, "no registration")

    def _on_address_change(self, ctl: _Control, addr: Address) -> None:
        ctl.address = addr
        reg = ctl.registration
        if reg is None:
            return
        for old in self.registry.move(reg, addr):
            self._displaced(old)
        self._stats["registrations_moved"] += 1

    def _forget(self, ctl: _Control) -> None:
        """The control connection is gone: its registration ends; release everything."""
        self._discard_control(ctl)
        if ctl.timer is not None:
            ctl.timer.cancel()
            ctl.timer = None
        if ctl.task is not None and not ctl.task.done():
            ctl.task.cancel()
        reg, ctl.registration = ctl.registration, None
        if reg is not None and self.registry.remove(reg):
            self._stats["clients_forgotten"] += 1
            log.info("relay: %s at %s:%d unregistered", reg.peer_id.short, *reg.address)

    def _displaced(self, reg: Registration) -> None:
        """``reg`` was replaced by a newer registration: close its control connection."""
        self._stats["registrations_replaced"] += 1
        old = reg.owner
        if isinstance(old, _Control):
            old.registration = None
            if old.driver is not None:
                old.driver.close(CLOSE_REPLACED, "registration replaced")

    def _on_stream(self, ctl: _Control, reader: asyncio.StreamReader, writer: object) -> None:
        unidirectional = isinstance(writer, QuicStreamWriter) and bool(writer.stream_id & 0x2)
        if ctl.stream_seen or unidirectional or not isinstance(writer, QuicStreamWriter):
            # one control stream per connection; more is a protocol violation
            if ctl.driver is not None:
                ctl.driver.close(CLOSE_PROTOCOL, "one control stream only")
            return
        ctl.stream_seen = True
        ctl.task = self._loop.create_task(self._serve_control(ctl, reader, writer))

    async def _serve_control(
        self, ctl: _Control, reader: asyncio.StreamReader, writer: QuicStreamWriter
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
                elif isinstance(msg, RelayLookup) and ctl.registration is None:
                    reply = RelayErrorMsg(code=RELAY_UNAUTHORIZED, reason="register first")
                elif isinstance(msg, RelayLookup):
                    reply = RelayLookupResult(
                        peer_id=msg.peer_id,
                        found=bool(locs := self.registry.locate(msg.peer_id)),
                        relays=tuple(RelayAddress(host=h, port=p) for h, p in locs),
                    )
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

    async def _reply(self, writer: QuicStreamWriter, msg: Message) -> None:
        await write_message(writer, msg, timeout=REPLY_TIMEOUT)

    def _register(self, ctl: _Control, msg: RelayRegister) -> Message:
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
                owner=ctl,
            )
            for old in self.registry.add(reg):
                self._displaced(old)
            ctl.registration = reg
            if ctl.timer is not None:
                ctl.timer.cancel()
                ctl.timer = None
            self._stats["registrations"] += 1
            log.info("relay: %s registered from %s:%d", msg.peer_id.short, *ctl.address)
        return RelayRegistered(
            peer_id=msg.peer_id,
            observed_ip=ctl.address[0],
            observed_port=ctl.address[1],
            keepalive_ms=self.limits.keepalive_ms,
        )

    # -- shutdown --------------------------------------------------------------------------
    async def close(self) -> None:
        """Close every control connection (CONNECTION_CLOSE), then every socket. Idempotent."""
        if self._closing:
            while not self._closed:
                await asyncio.sleep(0.01)
            return
        self._closing = True
        try:
            controls = list(self._controls)
            drivers = [c.driver for c in controls if c.driver is not None]
            for d in drivers:
                d.close(CLOSE_SHUTDOWN, "relay shutting down")
            if drivers and self.limits.shutdown_grace > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.limits.shutdown_grace):
                        await asyncio.gather(*(d.wait_closed() for d in drivers))
        finally:
            for ctl in list(self._controls):
                if ctl.driver is not None:
                    ctl.driver.abort()
                self._forget(ctl)
            tasks = [c.task for c in controls if c.task is not None]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            for mux in self._muxes.values():
                mux.close()
            for sock in self._sockets.values():
                sock.close()
            self._closed = True

    async def __aenter__(self) -> RelayServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _bind(
    network: Network,
    listen: Sequence[Address],
    alt_ip: str | None,
    sockets: dict[Address, DatagramSocket],
    software: str | None,
) -> tuple[list[Address], StunServerCore]:
    """Bind the listen sockets (and the RFC 5780 alternates); fills ``sockets`` as it goes."""
    primaries: list[Address] = []
    if alt_ip is None:
        for host, port in listen:
            sock = await network.bind(host, port)
            bound = _norm(sock.local_address)
            sockets[bound] = sock
            primaries.append(bound)
        return primaries, StunServerCore(primaries, software=software)
    alt_ip = _norm_ip(alt_ip)
    alt_ports: dict[int, int] = {}
    for primary_ip, port in listen:
        sock = await network.bind(primary_ip, port)
        bound_port = sock.local_address[1]
        sockets[(primary_ip, bound_port)] = sock
        primaries.append((primary_ip, bound_port))
        alt = bound_port + 1
        if alt > MAX_PORT:
            raise OSError(f"no alternate port above {bound_port}")
        for addr in ((primary_ip, alt), (alt_ip, bound_port), (alt_ip, alt)):
            sockets[addr] = await network.bind(*addr)
        alt_ports[bound_port] = alt
    return primaries, StunServerCore(primaries, alt_ip, alt_ports, software=software)
