"""``Endpoint``: one identity, one UDP socket, any number of peer connections.

The public façade. The endpoint binds ONE main socket and puts a :class:`DatagramMux` on it; on
that socket run a STUN client (candidates, the NAT's classification), one relay registration
per relay and every peer connection, dialer and acceptor alike. Each job is its own module,
wired together here:

- :mod:`.relays` keeps the relay registrations alive (:class:`RelaySet`);
- :mod:`.router` routes what arrives to its connection (QUIC by connection ID, checks by
  ufrag; an Initial nobody owns goes to :mod:`.admission`, anything else is dropped, counted);
- :mod:`.dialer` and :mod:`.admission` make outgoing and take incoming connections;
- :mod:`.gather` collects our candidates and classifies our NAT (``nat.classify``);
  :mod:`.portmapping` maps the main socket on the gateway;
- :mod:`.netwatch` notices network changes and re-gathers.

    async with Endpoint.bind(identity, relays=[("198.51.100.20", 3478)]) as ep:
        conn = await ep.connect(peer_id)

The endpoint is also what every connection's traversal agent uses for direct paths
(``traversal.agent.DirectHost``: the socket, our candidates, check routing, the network).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Sequence
from types import TracebackType
from typing import Any

from punchthrough.endpoint import relayspec
from punchthrough.endpoint.admission import Admission
from punchthrough.endpoint.config import EndpointConfig
from punchthrough.endpoint.connection import Connection
from punchthrough.endpoint.dialer import Dialer
from punchthrough.endpoint.dualstack import bind_host
from punchthrough.endpoint.errors import Displaced, EndpointClosed
from punchthrough.endpoint.fleet import DISPLACED, RelayFleet
from punchthrough.endpoint.gather import Gatherer, host_ips
from punchthrough.endpoint.homing import HomingSettings
from punchthrough.endpoint.netwatch import NetworkWatch, WatchedSocket
from punchthrough.endpoint.peerauth import Admit, AllowCallback
from punchthrough.endpoint.portmapping import MainSocketMapping
from punchthrough.endpoint.relaymap import RelayMap, fleet_map
from punchthrough.endpoint.relays import RelaySet, RelaySpec, parse_relay
from punchthrough.endpoint.router import PacketRouter
from punchthrough.endpoint.transports import RelayTransports
from punchthrough.identity import Identity, PeerId
from punchthrough.nat.probe import PROBE_RTO
from punchthrough.netio import Address, DatagramSocket, Network, UdpNetwork
from punchthrough.portmap import PortMapper
from punchthrough.relay import RelayClient
from punchthrough.stun import StunClient
from punchthrough.transport.demux import DatagramMux
from punchthrough.traversal.host import AgentHandle
from punchthrough.traversal.local import LocalCandidates

__all__ = ["Endpoint", "RelaySpec", "parse_relay"]


class _Binding:
    """What :meth:`Endpoint.bind` returns: await it, or use it as an async context manager."""

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, Endpoint]]) -> None:
        self._factory = factory
        self._endpoint: Endpoint | None = None

    def __await__(self) -> Generator[Any, None, Endpoint]:
        return self._factory().__await__()

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


class Endpoint(RelayTransports):
    """This peer on the network: accepts and makes end-to-end authenticated connections."""

    def __init__(
        self,
        identity: Identity,
        sock: DatagramSocket,
        *,
        stun: Sequence[Address],
        config: EndpointConfig,
        allow: AllowCallback | None,
        network: Network | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.identity = identity
        self.config = config
        self.network = network
        self._closed = False
        self._stats: Counter[str] = Counter()
        #: Why this endpoint was displaced (another instance of its identity took its relay
        #: registration; it then closes itself), or None.
        self.displaced: str | None = None
        #: The relay fleet (home relay, visits, failover) when bound with a ``relay_map``.
        self.fleet: RelayFleet | None = None
        self._closer: asyncio.Task[None] | None = None  # the close after a displacement
        #: Insertion-ordered (not a set hashed by id): closing goes in the same order every run.
        self._connections: dict[Connection, None] = {}
        closed = self._is_closed
        self._sock: DatagramSocket = WatchedSocket(sock, lambda r: self.network_suspect(r))
        self.mux = DatagramMux(self._sock)
        #: STUN client on the main socket (candidate gathering uses it).
        self.stun = StunClient(self._sock, rto=PROBE_RTO)
        #: Our candidates (shared by every connection), re-gathered on network changes.
        self._local = LocalCandidates()
        self._relays = RelaySet(
            self.mux,
            identity,
            config,
            self._stats,
            is_closed=closed,
            on_data=lambda relay, src, data: self._router.relay_data(relay, src, data),
            on_notice=lambda relay, code, peer: self._dialer.relay_notice(relay, code, peer),
            on_network=lambda reason: self._watch.relay_event(reason),
            last_seen=lambda ip: self._gatherer.seen.get(ip),
        )
        self._admission = Admission(
            config,
            self._stats,
            allow,
            new_connection=lambda peer, admit: self._new_connection(
                peer, is_client=False, admit=admit
            ),
            relay_sender=self._relays.sender,
            is_closed=closed,
        )
        self._router = PacketRouter(
            self.mux,
            self._sock,
            self._stats,
            relay_sender=self._relays.sender,
            incoming=self._admission.incoming,
            is_relay=lambda addr: addr in self._relays.clients,
        )
        self._relays.on_replaced = self._replaced
        self.mux.add_stun_handler(self.stun.handle_datagram)
        self.mux.add_stun_handler(self._router.stun_check)
        self._dialer = Dialer(
            self._relays,
            config,
            self._stats,
            new_connection=lambda peer: self._new_connection(peer, is_client=True),
            is_closed=closed,
        )
        self._mapping = MainSocketMapping(self._local, lambda: self._watch.changed_soon())
        self._gatherer = Gatherer(
            self._local,
            self._sock,
            network,
            self.stun,
            list(stun),
            relays=self._relays.clients,
            port_mapper=lambda: self._mapping.mapper,
            agents=self._router.ufrags.values,
            is_closed=closed,
            udp_unanswered=self._relays.udp_unanswered,
        )
        self._watch = NetworkWatch(
            self._local,
            config.nat_keepalive,
            self._stats,
            relays=self._relays.clients,
            gather=self._gatherer.gather,
            host_ips=self._host_ips,
            agents=self._router.ufrags.values,
            is_closed=closed,
        )

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def bind(
        cls,
        identity: Identity,
        relays: Sequence[RelaySpec] = (),
        stun: Sequence[RelaySpec] = (),
        network: Network | None = None,
        host: str | None = None,
        port: int = 0,
        allow: AllowCallback | None = None,
        *,
        config: EndpointConfig | None = None,
        gateway: str | None = None,
        upnp: bool = False,
        relay_map: RelayMap | None = None,
        homing: HomingSettings | None = None,
        home_relay: str | None = None,
    ) -> _Binding:
        """Bind the main socket, map it on the gateway, register with every relay, gather.

        ``await Endpoint.bind(...)`` or ``async with Endpoint.bind(...) as ep``. Raises
        :class:`NoRelay` if relays were given and none registered (the reasons are in the
        message); relays that fail or drop later are retried in the background.
        ``allow(peer_id) -> bool`` (or a coroutine) decides whether an authenticated caller is
        accepted; by default everyone is.

        ``gateway``: the LAN gateway's IP to ask for a port mapping of the main socket
        (NAT-PMP and PCP; ``upnp`` adds UPnP IGD on real networks). Never probed unless given.
        The mapping is made *before* the relays register, so that the address they observe is
        the one the mapping keeps. ``stun``: servers whose observed addresses become
        server-reflexive candidates (and tell whether our NAT maps endpoint-independently).

        ``relay_map``: a relay fleet (``endpoint.relaymap``) sharing a directory, instead of
        ``relays``: we register with the nearest relay only (our home, by measured RTT), call
        peers by id through their home relays, and move home and calls when a relay fails
        (``endpoint.fleet``; ``homing`` tunes when; ``home_relay`` names the first home).
        ``relays=["r1=198.51.100.31:3478", ...]`` (every one with an id) is a fleet too.
        ``host``: the main socket's IP; by default one dual-stack socket (``::``) when the
        network has IPv6, else ``0.0.0.0`` (:func:`punchthrough.endpoint.dualstack.bind_host`).
        """
        relay_map, entries, stuns = relayspec.parse_lists(relays, stun, relay_map, fleet_map)

        async def make() -> Endpoint:
            net = network if network is not None else UdpNetwork()
            bound = bind_host(net, host)
            sock = await net.bind(bound, port)
            try:
                ep = cls(
                    identity,
                    sock,
                    stun=list(await relayspec.resolve_entries(stuns, bound)),
                    config=config or EndpointConfig(),
                    allow=allow,
                    network=net,
                )
            except BaseException:
                sock.close()
                raise
            try:
                if gateway is not None:
                    port_ = ep._sock.local_address[1]
                    await ep._mapping.start(net, gateway, port_, ep._host_ips(), upnp=upnp)
                if relay_map is not None:
                    await ep._start_fleet(relay_map, homing, home_relay).start()
                    await ep.gather()
                else:  # registers, then gathers (alongside: config.pipeline_registration)
                    keys = await ep._relays.use(entries, bound, ep.stun, ep._watch.relay_event)
                    await ep._relays.start(keys, ep._gatherer.gather)
                ep._watch.start()
            except BaseException:
                await ep.close()
                raise
            return ep

        return _Binding(make)

    def _is_closed(self) -> bool:
        return self._closed

    def _start_fleet(
        self, relay_map: RelayMap, homing: HomingSettings | None, prefer: str | None
    ) -> RelayFleet:
        self.fleet = fleet = RelayFleet(
            self._relays,
            self.stun,
            relay_map,
            self._stats,
            settings=homing,
            relay_timeout=self.config.relay_timeout,
            prefer=prefer,
            is_closed=self._is_closed,
            connections=lambda: list(self._connections),
            on_displaced=self._displaced,
        )
        self._dialer.resolve, self._dialer.peer_moved = fleet.resolve, fleet.peer_moved
        return fleet

    def _replaced(self, relay: Address) -> None:
        if not self._relays.clients and self.fleet is None:
            self._displaced(f"{DISPLACED} {relay[0]}:{relay[1]}; this one is no longer reachable")

    def _displaced(self, reason: str) -> None:
        """Another instance of our identity took our place: say so, then close (never stay
        up unreachable). ``accept()``/``connect()`` raise :class:`Displaced` from now on."""
        if self.displaced is not None or self._closed:
            return
        self.displaced = reason
        self._stats["displaced"] += 1
        self._closer = self._loop.create_task(self.close(f"displaced: {reason}"))

    def _host_ips(self) -> list[str]:
        return host_ips(self._sock, self.network)

    # -- connections ----------------------------------------------------------------------------
    def _new_connection(
        self, peer: PeerId, *, is_client: bool, admit: Admit | None = None
    ) -> Connection:
        """A dialer, or an acceptor whose proven caller goes to ``admit`` (the admission's)."""
        conn = Connection(
            identity=self.identity,
            peer_id=peer,
            is_client=is_client,
            config=self.config,
            register_cid=self._router.register_cid,
            on_closed=self._connection_closed,
            admit=admit,
            direct=self if self.config.direct else None,
        )
        self._connections[conn] = None
        return conn

    def _connection_closed(self, conn: Connection) -> None:
        self._connections.pop(conn, None)
        self._dialer.forget(conn)
        self._router.forget(conn)
        self._admission.forget(conn)

    async def connect(self, peer_id: PeerId | str, timeout: float | None = None) -> Connection:
        """Dial ``peer_id`` through a relay; returns once the connection is usable.

        Raises :class:`NoRelay`, :class:`PeerUnreachable` (the relay does not know the peer),
        :class:`PeerIdMismatch`, :class:`PeerRefused`, :class:`HandshakeFailed`,
        :class:`ConnectTimeout` (after ``timeout``, default ``config.connect_timeout``) or
        :class:`EndpointClosed`.
        """
        if self.displaced is not None:
            raise Displaced(self.displaced)
        return await self._dialer.connect(peer_id, timeout)

    async def accept(self) -> Connection:
        """The next authenticated, allowed incoming connection; :class:`EndpointClosed` at end
        (:class:`Displaced` when another instance of our identity took our place)."""
        try:
            return await self._admission.accept()
        except EndpointClosed:
            if self.displaced is not None:
                raise Displaced(self.displaced) from None
            raise

    def __aiter__(self) -> AsyncIterator[Connection]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Connection]:
        while True:
            try:
                yield await self.accept()
            except EndpointClosed:
                return

    # -- candidates, and what connections' agents use (traversal.agent.DirectHost) -------------
    async def gather(self) -> LocalCandidates:
        """(Re)collect our candidates: host, mapped, server-reflexive (relays, STUN servers).

        Returns the shared :class:`LocalCandidates`; its ``generation`` grows when the set
        changed (connections then send ``CandidateUpdate``).
        """
        return await self._gatherer.gather()

    async def summary_ready(self) -> None:
        """Wait for the running filtering test (the NAT summary is final afterwards)."""
        await self._gatherer.summary_ready()

    @property
    def sock(self) -> DatagramSocket:
        """The main socket: STUN, relay traffic, checks and direct QUIC all use it."""
        return self._sock

    @property
    def local_candidates(self) -> LocalCandidates:
        return self._local

    def sample_servers(self) -> list[Address]:
        """STUN servers for fresh port samples: our relays (they answer STUN) and --stun."""
        return list(dict.fromkeys([*self._relays.clients, *self.stun_servers]))

    def register_ufrag(self, ufrag: str, agent: AgentHandle | None) -> None:
        """Route checks whose USERNAME names ``ufrag`` to ``agent`` (``None`` removes)."""
        self._router.register_ufrag(ufrag, agent)

    # -- network changes (see punchthrough.endpoint.netwatch) -----------------------------------
    def network_suspect(self, reason: str) -> None:
        """A hint that the network may have changed (a send error, a direct path found dead):
        look now (our addresses, a keepalive to each relay, which reports a new mapping or a
        relay answering again), at most every ``netwatch.SUSPECT_DEBOUNCE``. Never re-gathers
        by itself."""
        self._watch.suspect(reason)

    async def network_changed(self, reason: str = "network changed") -> None:
        """Our network changed (new address, NAT reboot or rebinding, a relay reachable again,
        a new port mapping): PING every relay (the registration follows our new address), ask
        each where it sees us now, re-gather, and start a new candidate generation (even when
        the candidates look the same: the paths may not be), which every connection sends to
        its peer (``CandidateUpdate``) before checking again. Concurrent calls coalesce."""
        await self._watch.network_changed(reason)

    @property
    def network_events(self) -> list[tuple[float, str]]:
        """``(loop time, reason)`` of every network change acted upon (re-gathers)."""
        return self._watch.events

    # -- state ----------------------------------------------------------------------------------
    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def local_address(self) -> Address:
        return self.sock.local_address

    @property
    def stun_servers(self) -> list[Address]:
        """The ``stun`` servers given to :meth:`bind`."""
        return self._gatherer.stun_servers

    @property
    def port_mapper(self) -> PortMapper | None:
        """The main socket's port mapping on the gateway (None: no gateway given)."""
        return self._mapping.mapper

    @property
    def relay_addresses(self) -> list[Address]:
        """Relays we are registered with right now."""
        return self._relays.registered()

    @property
    def home_relay(self) -> str | None:
        """Our home relay's id in a fleet (None without a relay map)."""
        return self.fleet.home if self.fleet is not None else None

    @property
    def address(self) -> str:
        """How peers reach us: our peer id, with ``@home-relay`` in a fleet (a dialer then
        skips the directory lookup)."""
        home = self.home_relay
        return f"{self.peer_id}@{home}" if home else str(self.peer_id)

    @property
    def relays(self) -> dict[Address, RelayClient]:
        return dict(self._relays.clients)

    @property
    def connections(self) -> list[Connection]:
        return list(self._connections)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> dict[str, int]:
        out = {str(k): v for k, v in self._stats.items()}  # typed keys (admission.Drop) as str
        out.update({f"mux_{k}": v for k, v in self.mux.stats.items()})
        return out

    # -- shutdown -------------------------------------------------------------------------------
    async def close(self, reason: str = "endpoint closing") -> None:
        """Hang up every connection, leave every relay, release the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._admission.wake()
        try:
            conns = list(self._connections)
            if conns:
                await asyncio.gather(*(c.close(reason) for c in conns), return_exceptions=True)
            watchers = self._watch.tasks()
            if self._gatherer.filter_task is not None:
                watchers.append(self._gatherer.filter_task)
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            if self.fleet is not None:
                await self.fleet.close()
            await self._relays.close()
            await self._mapping.close()
        finally:
            for c in list(self._connections):
                c.abort()
            self._relays.clients.clear()
            self._router.ufrags.clear()
            self.stun.close()
            self.mux.close()
            self._sock.close()

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
