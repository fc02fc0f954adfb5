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

Network changes. The endpoint keeps its NAT bindings alive (each relay client's STUN keepalive,
every ``config.nat_keepalive``) and watches for a changed network, cheaply:

- the set of local addresses, every ``nat_keepalive`` (a new address, a lost one: Wi-Fi to
  cellular, a DHCP renumbering, a link that went down and came back);
- a relay that sees us at a new address (NAT reboot or rebinding, a new network behind the same
  private address) or answers again after unanswered keepalives (the network came back);
- a send error on the main socket, or a direct path a connection's monitor found dead: these only
  make the endpoint look now (addresses, a keepalive to each relay), they change nothing alone.

A change runs :meth:`Endpoint.network_changed`: a QUIC PING to every relay (the registration
follows our new address), a re-gather, a new candidate generation, and every connection's
``CandidateUpdate`` plus new checks (``TraversalAgent.local_candidates_changed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, Final, cast, get_args

from punchthrough.endpoint.admission import Admission
from punchthrough.endpoint.config import EndpointConfig
from punchthrough.endpoint.connection import AllowCallback, Connection
from punchthrough.endpoint.dialer import Dialer
from punchthrough.endpoint.errors import (
    EndpointClosed,
)
from punchthrough.endpoint.relays import RelaySet, RelaySpec, parse_relay
from punchthrough.endpoint.router import PacketRouter
from punchthrough.identity import Identity, PeerId
from punchthrough.nat.behavior import Behavior, Sample
from punchthrough.nat.classify import NatObservations, Purpose, classify_nat
from punchthrough.nat.filtering import filter_wait, filtering_test
from punchthrough.nat.probe import PROBE_RTO
from punchthrough.nat.summary import AD, APD, EI
from punchthrough.netio import Address, DatagramReceiver, DatagramSocket, Network, UdpNetwork
from punchthrough.portmap import PortMapError, PortMapper, PortMapping
from punchthrough.relay import (
    RelayClient,
)
from punchthrough.signal.messages import Behavior as BehaviorText
from punchthrough.signal.messages import PortMappingProtocol
from punchthrough.stun import (
    BindingResult,
    StunClient,
    StunError,
)
from punchthrough.transport.demux import DatagramMux
from punchthrough.traversal.agent import LocalCandidates, TraversalAgent
from punchthrough.traversal.candidates import make_candidates
from punchthrough.traversal.hardnat.plan import Budget
from punchthrough.traversal.stages import MappingHint

log = logging.getLogger(__name__)


def _address_towards(gateway: str, host_ips: Sequence[str]) -> str | None:
    """Our address on the gateway's LAN: same /24 first, then any non-loopback address.

    The mapper binds its socket there (PCP puts it in the request); the first listed address is
    often 127.0.0.1, from which the gateway is unreachable (found in the lab).
    """
    usable = [ip for ip in host_ips if not ipaddress.ip_address(ip).is_loopback]
    prefix = gateway.rsplit(".", 1)[0] + "."
    same_net = [ip for ip in usable if ip.startswith(prefix)]
    candidates = same_net or usable
    return candidates[0] if candidates else None


#: Budget of one STUN Binding to a server while gathering candidates: a server that has not
#: answered by then is skipped (from an RTO of ``PROBE_RTO``, 0.25 s, 3 tries fit); it also
#: caps the filtering test's wait.
GATHER_TIMEOUT: Final = 1.0
#: The planner's mapping verdict as the candidates' hint (Purpose.PLAN never says AD).
_HINTS: Final[dict[BehaviorText, MappingHint]] = {
    EI: "independent",
    AD: "dependent",
    APD: "dependent",
    "unknown": "unknown",
}
_PROTOCOLS: Final[frozenset[str]] = frozenset(get_args(PortMappingProtocol))
#: Hints that the network may have changed (a send error, a dead direct path) make the endpoint
#: look at most this often.
SUSPECT_DEBOUNCE: Final = 0.5
#: How long a network-change re-gather waits for each relay's fresh STUN answer.
REFRESH_TIMEOUT: Final = 1.0


class _WatchedSocket:
    """The main socket, with a hook on send errors (the kernel's ENETUNREACH, EADDRNOTAVAIL,
    ICMP errors: ``send_errors`` grows, or ``sendto`` raises). Everything else passes through."""

    def __init__(self, sock: DatagramSocket, on_error: Callable[[str], None]) -> None:
        self._sock = sock
        self._on_error = on_error
        self._errors = sock.send_errors

    @property
    def local_address(self) -> Address:
        return self._sock.local_address

    @property
    def closed(self) -> bool:
        return self._sock.closed

    @property
    def send_errors(self) -> int:
        return self._sock.send_errors

    def sendto(self, data: bytes, addr: Address) -> None:
        try:
            self._sock.sendto(data, addr)
        except OSError as exc:
            if not self._sock.closed:
                self._on_error(f"send to {addr[0]}:{addr[1]} failed: {exc}")
            raise
        errors = self._sock.send_errors
        if errors != self._errors:
            self._errors = errors
            self._on_error(f"send errors on the main socket ({errors})")

    def set_receiver(self, receiver: DatagramReceiver | None) -> None:
        self._sock.set_receiver(receiver)

    def close(self) -> None:
        self._sock.close()


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
        network: Network | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.identity = identity
        self._sock: DatagramSocket = _WatchedSocket(
            sock, lambda reason: self.network_suspect(reason)
        )
        sock = self._sock
        self.network = network
        self.mux = DatagramMux(sock)
        #: STUN client on the main socket (netcheck and candidate gathering use it).
        self.stun = StunClient(sock, rto=PROBE_RTO)
        #: Our candidates (shared by every connection), re-gathered on network changes.
        self._local = LocalCandidates()
        self.port_mapper: PortMapper | None = None
        self._srflx_seen: dict[str, Address] = {}
        self.stun_servers: list[Address] = list(stun)
        self.config = config
        self._stats: Counter[str] = Counter()
        self._relays = RelaySet(
            self.mux,
            identity,
            config,
            self._stats,
            is_closed=lambda: self._closed,
            on_data=lambda relay, src, data: self._router.relay_data(relay, src, data),
            on_notice=lambda relay, code, peer: self._dialer.relay_notice(relay, code, peer),
            on_network=self._network_event,
            last_seen=lambda ip: self._srflx_seen.get(ip),
        )
        self._admission = Admission(
            config,
            self._stats,
            allow,
            new_connection=lambda peer: self._new_connection(peer, is_client=False),
            relay_sender=self._relays.sender,
            is_closed=lambda: self._closed,
        )
        self._router = PacketRouter(
            self.mux,
            sock,
            self._stats,
            relay_sender=self._relays.sender,
            incoming=self._admission.incoming,
            is_relay=lambda addr: addr in self._relays.clients,
        )
        self.mux.add_stun_handler(self.stun.handle_datagram)
        self.mux.add_stun_handler(self._router.stun_check)
        self._dialer = Dialer(
            self._relays,
            config,
            self._stats,
            new_connection=lambda peer: self._new_connection(peer, is_client=True),
            is_closed=lambda: self._closed,
        )
        self._connections: set[Connection] = set()
        self._closed = False
        #: Network watch: local addresses last seen, hint debounce, re-gathers in progress.
        self._last_ips: set[str] = set()
        self._last_suspect = -math.inf
        self._watch_task: asyncio.Task[None] | None = None
        self._bg_tasks: set[asyncio.Task[Any]] = set()
        #: The background RFC 5780 filtering test of the latest gather (see ``gather``).
        self._filter_task: asyncio.Task[None] | None = None
        self._filter_round = 0
        self._regather_lock = asyncio.Lock()
        self._change_reasons: list[str] = []
        self._regathering = False
        #: ``(loop time, reason)`` of every network change acted upon (re-gathers).
        self.network_events: list[tuple[float, str]] = []

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
        gateway: str | None = None,
        upnp: bool = False,
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
                    network=net,
                )
            except BaseException:
                sock.close()
                raise
            try:
                if gateway is not None:
                    await ep._start_port_mapping(net, gateway, upnp=upnp)
                await ep._relays.start(relay_addrs)
                await ep.gather()
                ep._start_network_watch()
            except BaseException:
                await ep.close()
                raise
            return ep

        return _Binding(make)

    # -- relay data plane -----------------------------------------------------------------------
    # -- connections ----------------------------------------------------------------------------
    def _new_connection(self, peer: PeerId, *, is_client: bool) -> Connection:
        conn = Connection(
            identity=self.identity,
            peer_id=peer,
            is_client=is_client,
            config=self.config,
            register_cid=self._router.register_cid,
            on_closed=self._connection_closed,
            admit=None if is_client else self._admission.admit,
            direct=self if self.config.direct else None,
        )
        self._connections.add(conn)
        return conn

    def _connection_closed(self, conn: Connection) -> None:
        self._connections.discard(conn)
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
        return await self._dialer.connect(peer_id, timeout)

    async def accept(self) -> Connection:
        """The next authenticated, allowed incoming connection; :class:`EndpointClosed` at end."""
        return await self._admission.accept()

    def __aiter__(self) -> AsyncIterator[Connection]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Connection]:
        while True:
            try:
                yield await self.accept()
            except EndpointClosed:
                return

    # -- candidates and checks --------------------------------------------------------------------
    @property
    def sock(self) -> DatagramSocket:
        """The main socket: STUN, relay traffic, checks and direct QUIC all use it."""
        return self._sock

    @property
    def local_candidates(self) -> LocalCandidates:
        return self._local

    @property
    def budget(self) -> Budget:
        """What the hard-NAT stages may spend (sockets, probes, rate, duration)."""
        return self.config.hardnat_budget

    def sample_servers(self) -> list[Address]:
        """STUN servers for fresh port samples: our relays (they answer STUN) and --stun."""
        return list(dict.fromkeys([*self._relays.clients, *self.stun_servers]))

    def register_ufrag(self, ufrag: str, agent: TraversalAgent | None) -> None:
        """Route checks whose USERNAME names ``ufrag`` to ``agent`` (``None`` removes)."""
        self._router.register_ufrag(ufrag, agent)

    async def _start_port_mapping(self, net: Network, gateway: str, *, upnp: bool) -> None:
        """Map the main socket's port on the gateway (NAT-PMP / PCP / UPnP); best effort."""
        local_ip = _address_towards(gateway, self._host_ips())
        mapper = PortMapper(
            net,
            gateway,
            self._sock.local_address[1],
            local_ip=local_ip,
            upnp=upnp,
            on_change=self._mapping_changed,
        )
        self.port_mapper = mapper
        try:
            mapping = await mapper.start()
        except (OSError, PortMapError, ValueError) as exc:
            self._local.port_mapping_note = f"port mapping failed: {exc}"
            return
        self._note_mapping(mapping)

    def _note_mapping(self, mapping: PortMapping | None) -> None:
        mapper = self.port_mapper
        if mapping is None:
            answered = mapper.report.answered() if mapper is not None else []
            self._local.port_mapping_note = (
                "the gateway refused a mapping"
                if answered
                else "the gateway answers no port-mapping protocol"
            )
        elif mapping.double_nat:
            self._local.port_mapping_note = (
                f"mapping {mapping.external_text()} is behind another NAT (double NAT): not offered"
            )
        else:
            self._local.port_mapping_note = f"mapped {mapping.external_text()} ({mapping.protocol})"

    def _mapping_changed(self, mapping: PortMapping | None) -> None:
        self._note_mapping(mapping)
        if not self._closed:
            self._loop.create_task(self.network_changed())

    def _host_ips(self) -> list[str]:
        local_ip = self._sock.local_address[0]
        if local_ip not in ("0.0.0.0", "::", ""):
            return [local_ip]
        lister = getattr(self.network, "interface_addresses", None)
        if callable(lister):
            try:
                ips = lister()
            except OSError:
                return []
            return [str(ip) for ip in ips]
        return []

    async def gather(self) -> LocalCandidates:
        """(Re)collect our candidates: host, mapped, server-reflexive (relays, STUN servers).

        Returns the shared :class:`LocalCandidates`; its ``generation`` grows when the set
        changed (connections then send ``CandidateUpdate``).
        """
        srflx: list[tuple[Address, str]] = []
        seen: dict[str, Address] = {}
        samples: list[Sample] = []  # in the order the mappings were made
        for addr, client in self._relays.clients.items():
            # where the relay sees us now (registration, then kept fresh by its keepalives)
            srflx.append((client.mapped_address, addr[0]))
            seen[addr[0]] = client.mapped_address
            samples.append(Sample(addr, client.mapped_address))
        results: list[tuple[Address, BindingResult]] = []
        if self.stun_servers:

            async def one(server: Address) -> tuple[Address, BindingResult] | None:
                try:
                    res = await self.stun.binding(server, timeout=GATHER_TIMEOUT)
                except (StunError, OSError):
                    return None
                return server, res

            for r in await asyncio.gather(*(one(s) for s in self.stun_servers)):
                if r is not None:
                    results.append(r)
                    srflx.append((r[1].mapped, r[0][0]))
                    seen.setdefault(r[0][0], r[1].mapped)
                    samples.append(Sample(r[0], r[1].mapped))
        self._srflx_seen = seen
        mapper = self.port_mapper
        mapped = mapper.candidate if mapper is not None else None
        protocol = (
            mapper.mapping.protocol if mapper is not None and mapper.mapping is not None else None
        )
        offered: tuple[PortMappingProtocol, ...] = ()
        if mapped is not None and protocol in _PROTOCOLS:
            offered = (cast(PortMappingProtocol, protocol),)
        obs = NatObservations(
            samples=samples, udp=bool(samples) or not self.stun_servers, port_mapping=offered
        )
        summary = classify_nat(obs, Purpose.PLAN)
        mapping = _HINTS[summary.mapping]
        cands = make_candidates(
            self._sock.local_address[1], host_ips=self._host_ips(), srflx=srflx, mapped=mapped
        )
        local = self._local
        changed = cands != local.candidates or mapping != local.mapping
        if changed and local.candidates:
            local.generation += 1
        local.candidates = cands
        local.mapping = mapping
        local.allocation, local.delta = summary.allocation, summary.delta
        local.mapped = mapped
        local.mapped_protocol = protocol
        local.public_ip = summary.public_ip
        local.summary = summary
        self._filter_round += 1
        if self._filter_task is not None:
            self._filter_task.cancel()
            self._filter_task = None
        if mapping == "independent" and any(r.other_address for _, r in results):
            # The filtering test waits up to MIN_FILTER_WAIT for answers a filtering NAT drops:
            # run it behind the call instead of before it. Only the NAT summary waits for it
            # (connections send theirs when it is ready); candidates and the hole punch don't.
            local.summary_ready = False
            self._filter_task = self._loop.create_task(
                self._finish_filtering(self._filter_round, results, obs)
            )
        else:
            local.summary_ready = True
        return local

    async def _finish_filtering(
        self, round_: int, results: list[tuple[Address, BindingResult]], obs: NatObservations
    ) -> None:
        try:
            filtering = await self._filtering_test(results)
        except Exception:  # a bug here must not leave the summary pending forever
            log.exception("filtering test failed")
            filtering = Behavior.UNKNOWN
        if round_ != self._filter_round or self._closed:
            return  # a newer gather superseded this one
        local = self._local
        local.summary = classify_nat(replace(obs, filtering=filtering), Purpose.PLAN)
        local.summary_ready = True
        self._filter_task = None
        for agent in set(self._router.ufrags.values()):
            agent.local_summary_ready()

    async def summary_ready(self) -> None:
        """Wait for the running filtering test (the NAT summary is final afterwards)."""
        task = self._filter_task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def _filtering_test(self, results: list[tuple[Address, BindingResult]]) -> Behavior:
        """RFC 5780 section 4.4 tests II and III against the first RFC 5780 server (from a
        fresh socket: the main socket has already sent to the servers' other addresses).

        Only worth it for an endpoint-independent mapping: the planner needs that side's
        filtering to know whether the peer's unannounced ports get through."""
        rfc5780 = [(srv, res) for srv, res in results if res.other_address is not None]
        if not rfc5780 or self.network is None:
            return Behavior.UNKNOWN
        server, res = rfc5780[0]
        wait = filter_wait([res.rtt], GATHER_TIMEOUT)
        return await filtering_test(self.network, self._sock.local_address[0], server, wait)

    # -- network changes -----------------------------------------------------------------------
    @property
    def nat_keepalive(self) -> float:
        """Keepalive interval of our NAT bindings (``config.nat_keepalive``)."""
        return self.config.nat_keepalive

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._bg_tasks.add(task)
        task.add_done_callback(self._bg_tasks.discard)

    def _start_network_watch(self) -> None:
        self._last_ips = set(self._host_ips())
        if self._watch_task is None and not self._closed:
            self._watch_task = self._loop.create_task(self._watch_network())

    async def _watch_network(self) -> None:
        """Every ``nat_keepalive``: have our local addresses changed? (Cheap: no packet.)"""
        while not self._closed:
            await asyncio.sleep(self.config.nat_keepalive)
            changed = self._addresses_changed()
            if changed is not None:
                await self.network_changed(changed)

    def _addresses_changed(self) -> str | None:
        """What changed in our local addresses since last looked (``None``: nothing)."""
        ips = set(self._host_ips())
        if ips == self._last_ips:
            return None
        gone, new = sorted(self._last_ips - ips), sorted(ips - self._last_ips)
        self._last_ips = ips
        parts = ([f"new address {', '.join(new)}"] if new else []) + (
            [f"lost address {', '.join(gone)}"] if gone else []
        )
        return "local addresses changed: " + "; ".join(parts)

    def network_suspect(self, reason: str) -> None:
        """A hint that the network may have changed (a send error, a direct path found dead):
        look now (our addresses, a keepalive to each relay, which reports a new mapping or a
        relay answering again), at most every :data:`SUSPECT_DEBOUNCE`. Never re-gathers by
        itself."""
        now = self._loop.time()
        if self._closed or now - self._last_suspect < SUSPECT_DEBOUNCE:
            return
        self._last_suspect = now
        self._stats["network_suspicions"] += 1
        log.debug("checking the network: %s", reason)
        self._spawn(self._check_network())

    async def _check_network(self) -> None:
        changed = self._addresses_changed()
        if changed is not None:
            await self.network_changed(changed)
            return
        clients = [c for c in self._relays.clients.values() if not c.closed]
        # A changed mapping or a relay answering again calls _network_event.
        await asyncio.gather(*(c.refresh(REFRESH_TIMEOUT) for c in clients))

    def _network_event(self, reason: str) -> None:
        """A relay client saw a change (new mapping, answers again): re-gather, unless a
        re-gather already under way covers it (it refreshes every relay first)."""
        if self._closed or self._regathering:
            return
        self._spawn(self.network_changed(reason))

    async def network_changed(self, reason: str = "network changed") -> None:
        """Our network changed (new address, NAT reboot or rebinding, a relay reachable again,
        a new port mapping): PING every relay (the registration follows our new address), ask
        each where it sees us now, re-gather, and start a new candidate generation (even when
        the candidates look the same: the paths may not be), which every connection sends to
        its peer (``CandidateUpdate``) before checking again. Concurrent calls coalesce."""
        if self._closed:
            return
        self._change_reasons.append(reason)
        async with self._regather_lock:
            if self._closed or not self._change_reasons:
                return  # a re-gather that started after this call covered it
            reasons, self._change_reasons = self._change_reasons, []
            self._regathering = True
            try:
                clients = [c for c in self._relays.clients.values() if not c.closed]
                for client in clients:
                    client.ping()
                await asyncio.gather(*(c.refresh(REFRESH_TIMEOUT) for c in clients))
                before = self._local.generation
                await self.gather()
                if self._local.generation == before:
                    self._local.generation += 1
            finally:
                self._regathering = False
            self._last_ips = set(self._host_ips())
            self._stats["regathers"] += 1
            text = "; ".join(dict.fromkeys(reasons))
            self.network_events.append((self._loop.time(), text))
            log.info("network changed (%s): candidate generation %d", text, self._local.generation)
            for agent in list(self._router.ufrags.values()):
                agent.local_candidates_changed()

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
        return self._relays.registered()

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
        out = dict(self._stats)
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
            watchers = list(self._bg_tasks)
            if self._watch_task is not None:
                watchers.append(self._watch_task)
            if self._filter_task is not None:
                watchers.append(self._filter_task)
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await self._relays.close()
            if self.port_mapper is not None:
                await self.port_mapper.close()
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
