"""``Endpoint``: one identity, one UDP socket, any number of peer connections.

The endpoint binds ONE main socket and puts a :class:`DatagramMux` on it. On that socket run a
STUN client (netcheck, candidates), one :class:`RelayClient` per relay (registration under our
peer id) and every peer connection, dialer and acceptor alike. Relayed QUIC packets arrive as
relay DATA frames stamped with the sender's peer id and are routed by QUIC destination
connection ID to their connection (so two connections with the same peer, e.g. both peers
dialling at once, never get mixed up); a long-header Initial nobody owns creates an acceptor
connection, anything else nobody owns is dropped and counted.

    async with Endpoint.bind(identity, relays=[("198.51.100.20", 3478)]) as ep:
        conn = await ep.connect(peer_id)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Generator, Sequence
from types import TracebackType
from typing import Any, Final

from punchthrough.endpoint.config import EndpointConfig
from punchthrough.endpoint.connection import AllowCallback, Connection, call_allow
from punchthrough.endpoint.errors import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    EndpointClosed,
    NoRelay,
    PeerUnreachable,
)
from punchthrough.identity import Identity, PeerId
from punchthrough.netio import Address, DatagramSocket, Network, UdpNetwork
from punchthrough.relay import (
    NOTICE_RATE_LIMITED,
    NOTICE_UNKNOWN_DESTINATION,
    RelayClient,
    RelayError,
)
from punchthrough.stun import StunClient
from punchthrough.transport.demux import DatagramMux, PacketKind, classify, quic_destination_cid
from punchthrough.transport.path import Path
from punchthrough.transport.quic import is_initial

log = logging.getLogger(__name__)

#: Re-registration back-off after a relay connection is lost (seconds): first try, cap.
RELAY_RETRY_INITIAL: Final = 1.0
RELAY_RETRY_MAX: Final = 30.0

RelaySpec = Address | str


def parse_relay(spec: RelaySpec) -> Address:
    """``("198.51.100.20", 3478)`` or ``"198.51.100.20:3478"`` / ``"[2001:db8::1]:3478"``."""
    if isinstance(spec, tuple):
        host, port = spec
    else:
        host, sep, port_text = spec.strip().rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"relay {spec!r} is not IP:PORT")
        host, port = host.strip("[]"), int(port_text)
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"relay host {host!r} is not an IP address") from None
    if not 0 < int(port) < 65536:
        raise ValueError(f"relay port {port} is not 1-65535")
    return (ip, int(port))


class _Binding:
    """What :meth:`Endpoint.bind` returns: await it, or use it as an async context manager."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._endpoint: Endpoint | None = None

    def __await__(self) -> Generator[Any, None, Endpoint]:
        return self._factory().__await__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> Endpoint:
        self._endpoint = await self._factory()
        return self._endpoint

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._endpoint is not None:
            await self._endpoint.close()


class Endpoint:
    """This peer on the network: accepts and makes end-to-end authenticated connections."""

    def __init__(
        self,
        identity: Identity,
        sock: DatagramSocket,
        *,
        stun: Sequence[Address],
        config: EndpointConfig,
        allow: AllowCallback | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.identity = identity
        self.sock = sock
        self.mux = DatagramMux(sock)
        #: STUN client on the main socket (netcheck and candidate gathering use it).
        self.stun = StunClient(sock)
        self.mux.add_stun_handler(self.stun.handle_datagram)
        self.stun_servers: list[Address] = list(stun)
        self.config = config
        self._allow = allow
        self._relay_specs: list[Address] = []
        self._relays: dict[Address, RelayClient] = {}
        self._relay_tasks: dict[Address, asyncio.Task[None]] = {}
        self._cids: dict[bytes, Connection] = {}
        self._connections: set[Connection] = set()
        self._dialing: dict[PeerId, set[Connection]] = {}
        self._relays_tried: dict[Connection, set[Address]] = {}
        self._accepted: deque[Connection] = deque()
        self._accept_waiter: asyncio.Future[None] | None = None
        self._pending_admission = 0
        self._closed = False
        self._stats: Counter[str] = Counter()

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def bind(
        cls,
        identity: Identity,
        relays: Sequence[RelaySpec] = (),
        stun: Sequence[RelaySpec] = (),
        network: Network | None = None,
        host: str = "0.0.0.0",
        port: int = 0,
        allow: AllowCallback | None = None,
        *,
        config: EndpointConfig | None = None,
    ) -> _Binding:
        """Bind the main socket and register with every relay.

        ``await Endpoint.bind(...)`` or ``async with Endpoint.bind(...) as ep``. Raises
        :class:`NoRelay` if relays were given and none registered (the reasons are in the
        message); relays that fail or drop later are retried in the background.
        ``allow(peer_id) -> bool`` (or a coroutine) decides whether an authenticated caller is
        accepted; by default everyone is.
        """
        relay_addrs = [parse_relay(r) for r in relays]
        stun_addrs = [parse_relay(s) for s in stun]

        async def make() -> Endpoint:
            net = network if network is not None else UdpNetwork()
            sock = await net.bind(host, port)
            try:
                ep = cls(
                    identity,
                    sock,
                    stun=stun_addrs,
                    config=config or EndpointConfig(),
                    allow=allow,
                )
            except BaseException:
                sock.close()
                raise
            try:
                await ep._start_relays(relay_addrs)
            except BaseException:
                await ep.close()
                raise
            return ep

        return _Binding(make)

    async def _start_relays(self, addrs: list[Address]) -> None:
        self._relay_specs = list(dict.fromkeys(addrs))
        if not self._relay_specs:
            return
        results = await asyncio.gather(
            *(self._register(a) for a in self._relay_specs), return_exceptions=True
        )
        errors: list[str] = []
        for addr, result in zip(self._relay_specs, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                errors.append(f"{addr[0]}:{addr[1]}: {result}")
                self._relay_tasks[addr] = self._loop.create_task(self._supervise(addr, None))
        if not self._relays:
            raise NoRelay("no relay registered us: " + "; ".join(errors))

    async def _register(self, addr: Address) -> None:
        client = await RelayClient.connect(
            self.mux, addr, self.identity, timeout=self.config.relay_timeout
        )
        if self._closed:
            await client.close()
            raise EndpointClosed("endpoint closed")
        self._attach_relay(addr, client)
        self._relay_tasks[addr] = self._loop.create_task(self._supervise(addr, client))

    def _attach_relay(self, addr: Address, client: RelayClient) -> None:
        self._relays[addr] = client
        client.set_receiver(lambda src, payload: self._relay_data(addr, src, payload))
        client.set_notice_handler(lambda code, peer: self._relay_notice(addr, code, peer))
        log.info(
            "registered with relay %s:%d as %s (seen as %s:%d)",
            *addr,
            self.identity.peer_id.short,
            *client.observed_address,
        )

    async def _supervise(self, addr: Address, client: RelayClient | None) -> None:
        """Keep a registration alive: when the relay connection is lost, register again."""
        delay = RELAY_RETRY_INITIAL
        while not self._closed:
            if client is not None:
                await client.wait_closed()
                if self._relays.get(addr) is client:
                    del self._relays[addr]
                if self._closed:
                    return
                reason = client.close_reason or ""
                if "replaced" in reason:
                    # Another instance of this identity registered after us: last one wins.
                    # Taking it back would make the two fight forever, so stay off this relay.
                    log.warning(
                        "relay %s:%d: our registration was taken over by another instance of "
                        "this identity; not re-registering",
                        *addr,
                    )
                    self._stats["relay_replaced"] += 1
                    return
                log.warning("lost relay %s:%d (%s); re-registering", *addr, reason)
                self._stats["relay_lost"] += 1
                client = None
                delay = RELAY_RETRY_INITIAL
            await asyncio.sleep(delay)
            try:
                client = await RelayClient.connect(
                    self.mux, addr, self.identity, timeout=self.config.relay_timeout
                )
            except (RelayError, OSError) as exc:
                log.info("relay %s:%d still unavailable: %s", *addr, exc)
                delay = min(delay * 2, RELAY_RETRY_MAX)
                continue
            if self._closed:
                await client.close()
                return
            self._attach_relay(addr, client)

    # -- relay data plane -----------------------------------------------------------------------
    def _relay_sender(self, relay: Address, peer: PeerId) -> Any:
        def send(data: bytes) -> None:
            client = self._relays.get(relay)
            if client is None or client.closed:
                raise OSError(f"not registered with relay {relay[0]}:{relay[1]}")
            client.send(peer, data)

        return send

    def _register_cid(self, cid: bytes, conn: Connection | None) -> None:
        if conn is None:
            self._cids.pop(cid, None)
            self.mux.remove_quic_cid(cid)
        else:
            self._cids[cid] = conn
            self.mux.add_quic_cid(cid, conn._direct_packet)

    def _relay_data(self, relay: Address, src: PeerId, payload: bytes) -> None:
        cid = quic_destination_cid(payload)
        conn = self._cids.get(cid) if cid is not None else None
        if conn is not None:
            if conn.peer_id != src:
                self._stats["dropped_relay_wrong_peer"] += 1
                return
            path = Path.relay(relay)
            if not conn.paths.has(path):
                conn.paths.add(path, self._relay_sender(relay, src))
            conn.packet_received(payload, path)
            return
        if classify(payload) is PacketKind.QUIC_LONG and is_initial(payload):
            self._incoming(relay, src, payload)
            return
        self._stats["dropped_relay_unknown"] += 1

    def _incoming(self, relay: Address, src: PeerId, initial: bytes) -> None:
        if self._closed:
            self._stats["dropped_closing"] += 1
            return
        if self._pending_admission >= self.config.accept_backlog:
            # Half-open connections cost ~90 KiB each: bound them (a flood of Initials from
            # a registered peer must not exhaust memory); QUIC retransmits the Initial.
            self._stats["dropped_incoming_backlog"] += 1
            return
        conn = self._new_connection(src, is_client=False)
        path = Path.relay(relay)
        conn.paths.add(path, self._relay_sender(relay, src))
        conn._start_server(initial, path)
        self._stats["incoming"] += 1
        self._pending_admission += 1
        self._loop.create_task(self._admit_when_ready(conn))

    async def _admit_when_ready(self, conn: Connection) -> None:
        try:
            await conn._wait_ready()
        except (ConnectError, ConnectionClosed) as exc:
            log.info("incoming connection from %s failed: %s", conn.peer_id.short, exc)
            self._stats["incoming_failed"] += 1
            return
        finally:
            self._pending_admission -= 1
        if self._closed or conn.closed:
            return
        self._stats["accepted"] += 1
        self._accepted.append(conn)
        if self._accept_waiter is not None and not self._accept_waiter.done():
            self._accept_waiter.set_result(None)

    async def _admit(self, peer_id: PeerId) -> str | None:
        """Acceptor policy: None admits; a string is the refusal reason sent to the dialer."""
        if self._closed:
            return "endpoint closing"
        if len(self._accepted) >= self.config.accept_backlog:
            self._stats["refused_busy"] += 1
            return "busy"
        if self._allow is not None and not await call_allow(self._allow, peer_id):
            self._stats["refused_allow"] += 1
            return "refused"
        return None

    def _relay_notice(self, relay: Address, code: int, peer: PeerId) -> None:
        if code == NOTICE_RATE_LIMITED:
            self._stats["relay_rate_limited"] += 1
            return
        if code != NOTICE_UNKNOWN_DESTINATION:
            self._stats["relay_notice_unknown"] += 1
            return
        self._stats["relay_unknown_destination"] += 1
        for conn in list(self._dialing.get(peer, ())):
            current = conn.paths.current
            if current is None or current != Path.relay(relay):
                continue
            tried = self._relays_tried.setdefault(conn, {relay})
            tried.add(relay)
            untried = [a for a in self._relays if a not in tried]
            if untried:
                nxt = untried[0]
                tried.add(nxt)
                conn.paths.add(Path.relay(nxt), self._relay_sender(nxt, peer), make_current=True)
                conn.paths.remove(Path.relay(relay), "peer not registered there")
            else:
                conn._unreachable(
                    PeerUnreachable(
                        f"peer {peer} is not registered with "
                        + ", ".join(f"{a[0]}:{a[1]}" for a in sorted(tried))
                    )
                )

    # -- connections ----------------------------------------------------------------------------
    def _new_connection(self, peer: PeerId, *, is_client: bool) -> Connection:
        conn = Connection(
            identity=self.identity,
            peer_id=peer,
            is_client=is_client,
            config=self.config,
            register_cid=self._register_cid,
            on_closed=self._connection_closed,
            admit=None if is_client else self._admit,
        )
        self._connections.add(conn)
        return conn

    def _connection_closed(self, conn: Connection) -> None:
        self._connections.discard(conn)
        self._relays_tried.pop(conn, None)
        for cid in [c for c, owner in self._cids.items() if owner is conn]:
            self._register_cid(cid, None)
        with contextlib.suppress(ValueError):
            self._accepted.remove(conn)

    async def connect(self, peer_id: PeerId | str, timeout: float | None = None) -> Connection:
        """Dial ``peer_id`` through a relay; returns once the connection is usable.

        Raises :class:`NoRelay`, :class:`PeerUnreachable` (the relay does not know the peer),
        :class:`PeerIdMismatch`, :class:`PeerRefused`, :class:`HandshakeFailed`,
        :class:`ConnectTimeout` (after ``timeout``, default ``config.connect_timeout``) or
        :class:`EndpointClosed`.
        """
        if self._closed:
            raise EndpointClosed("endpoint is closed")
        peer = peer_id if isinstance(peer_id, PeerId) else PeerId.parse(peer_id)
        relay = next((a for a in self._relay_specs if a in self._relays), None)
        if relay is None:
            raise NoRelay("not registered with any relay" if self._relay_specs else "no relays")
        timeout = self.config.connect_timeout if timeout is None else timeout
        conn = self._new_connection(peer, is_client=True)
        conn.paths.add(Path.relay(relay), self._relay_sender(relay, peer))
        self._relays_tried[conn] = {relay}
        self._dialing.setdefault(peer, set()).add(conn)
        try:
            conn._start_client()
            async with asyncio.timeout(timeout):
                await conn._wait_ready()
        except TimeoutError:
            conn.abort()
            raise ConnectTimeout(
                f"no usable connection to {peer.short} within {timeout:g} s "
                "(peer offline or not accepting?)"
            ) from None
        except ConnectionClosed as exc:
            conn.abort()
            if self._closed:
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

    async def accept(self) -> Connection:
        """The next authenticated, allowed incoming connection; :class:`EndpointClosed` at end."""
        while not self._accepted:
            if self._closed:
                raise EndpointClosed("endpoint is closed")
            self._accept_waiter = self._loop.create_future()
            try:
                await self._accept_waiter
            finally:
                self._accept_waiter = None
        return self._accepted.popleft()

    def __aiter__(self) -> AsyncIterator[Connection]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Connection]:
        while True:
            try:
                yield await self.accept()
            except EndpointClosed:
                return

    # -- state ----------------------------------------------------------------------------------
    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def local_address(self) -> Address:
        return self.sock.local_address

    @property
    def relay_addresses(self) -> list[Address]:
        """Relays we are registered with right now."""
        return [a for a in self._relay_specs if a in self._relays]

    @property
    def relays(self) -> dict[Address, RelayClient]:
        return dict(self._relays)

    @property
    def connections(self) -> list[Connection]:
        return list(self._connections)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        out.update({f"mux_{k}": v for k, v in self.mux.stats.items()})
        return out

    # -- shutdown -------------------------------------------------------------------------------
    async def close(self, reason: str = "endpoint closing") -> None:
        """Hang up every connection, leave every relay, release the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._accept_waiter is not None and not self._accept_waiter.done():
            self._accept_waiter.set_result(None)
        try:
            conns = list(self._connections)
            if conns:
                await asyncio.gather(*(c.close(reason) for c in conns), return_exceptions=True)
            for task in self._relay_tasks.values():
                task.cancel()
            await asyncio.gather(*self._relay_tasks.values(), return_exceptions=True)
            await asyncio.gather(
                *(c.close() for c in self._relays.values()), return_exceptions=True
            )
        finally:
            for c in list(self._connections):
                c.abort()
            self._relays.clear()
            self.stun.close()
            self.mux.close()
            self.sock.close()

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Endpoint({self.peer_id.short}, {self.local_address[0]}:{self.local_address[1]})"
