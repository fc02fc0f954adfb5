"""Relay supervision: the endpoint's registrations, one :class:`RelayClient` per relay.

The endpoint is reachable only while some relay knows it, so registrations are kept alive here:
registered at bind (all relays at once), registered again with back-off when a relay connection
is lost, and given up for good only when another instance of our identity took the registration
over (a typed :class:`RelayCloseCode`, never the reason text: taking it back would make the two
instances fight forever). Everything a registration delivers (DATA frames, NOTICEs, "the relay
sees us elsewhere") goes to the callbacks the endpoint wires in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from punchthrough.endpoint.config import EndpointConfig
from punchthrough.endpoint.errors import EndpointClosed, NoRelay
from punchthrough.endpoint.relaylink import RelayLinks
from punchthrough.endpoint.relayspec import RelayEntry, resolve_entries
from punchthrough.identity import Identity, PeerId
from punchthrough.netio import Address
from punchthrough.relay import RelayClient, RelayCloseCode, RelayError
from punchthrough.stun import StunClient
from punchthrough.transport.demux import DatagramMux

log = logging.getLogger(__name__)

#: Re-registration back-off after a relay connection is lost: the first try after 1 s (past a
#: momentary outage), doubling up to 30 s, the relay's QUIC idle timeout
#: (``relay.client.DEFAULT_IDLE_TIMEOUT``), so a relay that comes back is found again within
#: about one idle period.
RELAY_RETRY_INITIAL: Final = 1.0
RELAY_RETRY_MAX: Final = 30.0

RelaySpec = Address | str
#: ``(relay, sender peer id, payload)`` of a relayed DATA frame.
DataHandler = Callable[[Address, PeerId, bytes], None]
#: ``on_network(reason)``: a relay reachable over UDP again (re-gather).
NetworkHook = Callable[[str], None]
#: ``(relay, NOTICE code, peer id)``.
NoticeHandler = Callable[[Address, int, PeerId], None]
#: Candidate gathering (``Gatherer.gather``): ``gather(relays to ask by STUN)``.
Gather = Callable[[Sequence[Address]], Awaitable[object]]


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


class RelaySet:
    """Our registrations, kept alive. ``clients`` holds the live ones (registration order)."""

    def __init__(
        self,
        mux: DatagramMux,
        identity: Identity,
        config: EndpointConfig,
        stats: Counter[str],
        *,
        is_closed: Callable[[], bool],
        on_data: DataHandler,
        on_notice: NoticeHandler,
        on_network: Callable[[str], None],
        last_seen: Callable[[str], Address | None],
    ) -> None:
        """``on_network(reason)``: the relay sees us at a new address, or answers again.
        ``last_seen(relay_ip)``: where that relay's IP saw us at the last gather (a
        re-registration from elsewhere means our network changed)."""
        self._loop = asyncio.get_running_loop()
        self._mux = mux
        self._identity = identity
        self._config = config
        self._stats = stats
        self._is_closed = is_closed
        self._on_data = on_data
        self._on_notice = on_notice
        self._on_network = on_network
        self._last_seen = last_seen
        #: The relays asked for (deduplicated, in the caller's order).
        self.specs: list[Address] = []
        #: Relays we are registered with right now.
        self.clients: dict[Address, RelayClient] = {}
        #: Registrations under way (``config.pipeline_registration``): RelayRegister sent, the
        #: answer not in yet; a dial may already go through them (issue 17).
        self.pending: dict[Address, RelayClient] = {}
        self._tasks: dict[Address, asyncio.Task[None]] = {}
        #: Relay identities to verify, by address (a relay map's keys).
        self.pins: dict[Address, PeerId] = {}
        #: Called when a relay closed our registration because another instance of our
        #: identity took it over (the endpoint decides whether it is displaced for good).
        self.on_replaced: Callable[[Address], None] | None = None
        #: Relays with TLS/WebSocket transports register through it (``.relaylink``: happy
        #: eyeballs, back to UDP, UDP lost mid-call); set by the endpoint.
        self.links: RelayLinks | None = None

    def registered(self) -> list[Address]:
        """Relays we are registered with, in the caller's order."""
        return [a for a in self.specs if a in self.clients]

    def dialable(self) -> list[Address]:
        """Relays a dial may go through now: registered, or registering (pipelined)."""
        return [a for a in self.specs if a in self.clients or a in self.pending]

    def sender(self, relay: Address, peer: PeerId) -> Callable[[bytes], None]:
        """A path's send function: ``peer`` through ``relay`` (OSError when not registered)."""

        def send(data: bytes) -> None:
            client = self.clients.get(relay) or self.pending.get(relay)
            if client is None or client.closed:
                raise OSError(f"not registered with relay {relay[0]}:{relay[1]}")
            client.send(peer, data)

        return send

    async def start(self, addrs: list[Address], gather: Gather | None = None) -> None:
        """Register with every relay at once, then ``gather()`` our candidates;
        :class:`NoRelay` if none took us. The ones that failed are retried in the background.

        With ``config.pipeline_registration`` (issue 17) a UDP registration counts once its
        ``RelayRegister`` is sent (the answer comes in the background, :attr:`pending`), and
        gathering runs alongside, asking those relays by STUN: one relay round trip in all.
        """
        self.specs = list(dict.fromkeys(addrs))
        pipelined = self._config.pipeline_registration
        links = self.links
        ask = [a for a in self.specs if links is None or not links.handles(a)] if pipelined else []
        registering = asyncio.gather(
            *(self._register(a, pipelined=pipelined) for a in self.specs),
            return_exceptions=True,
        )
        # alongside only when every relay is asked (a TLS/WebSocket race's winner is not known
        # before it registers: then gather after, as without pipelining)
        alongside = gather is not None and pipelined and len(ask) == len(self.specs)
        if alongside:
            assert gather is not None
            results, _ = await asyncio.gather(registering, gather(ask))
        else:
            results = await registering
        errors: list[str] = []
        for addr, result in zip(self.specs, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                errors.append(f"{addr[0]}:{addr[1]}: {result}")
                self._tasks[addr] = self._loop.create_task(self._supervise(addr, None))
        if self.specs and not self.clients and not self.pending:
            raise NoRelay("no relay registered us: " + "; ".join(errors))
        if gather is not None and not alongside:
            await gather([a for a in ask if a in self.pending])

    async def _connect(self, addr: Address, *, visitor: bool = False) -> RelayClient:
        if self.links is not None and self.links.handles(addr) and not visitor:
            return await self.links.connect(addr)
        return await self.connect_udp(addr, visitor=visitor)

    async def connect_udp(
        self, addr: Address, *, visitor: bool = False, pipelined: bool = False
    ) -> RelayClient:
        """A registration with ``addr`` over UDP, from the endpoint's main socket."""
        return await RelayClient.connect(
            self._mux,
            addr,
            self._identity,
            timeout=self._config.relay_timeout,
            nat_keepalive=self._config.nat_keepalive,
            relay_peer_id=self.pins.get(addr),
            visitor=visitor,
            pipelined=pipelined,
        )

    async def join(self, addr: Address, *, visitor: bool = False) -> RelayClient:
        """Register with one more relay, unsupervised: a relay fleet (``endpoint.fleet``)
        decides itself what losing it means."""
        client = await self._connect(addr, visitor=visitor)
        if self._is_closed():
            await client.close()
            raise EndpointClosed("endpoint closed")
        if addr not in self.specs:
            self.specs.append(addr)
        self._attach(addr, client)
        return client

    async def leave(self, addr: Address) -> None:
        """End our registration with ``addr`` (joined with :meth:`join`)."""
        client = self.clients.pop(addr, None)
        if addr in self.specs:
            self.specs.remove(addr)
        if client is not None:
            await client.close()

    async def _register(self, addr: Address, *, pipelined: bool = False) -> None:
        if pipelined and not (self.links is not None and self.links.handles(addr)):
            client = await self.connect_udp(addr, pipelined=True)
        else:
            client = await self._connect(addr)
            pipelined = False
        if self._is_closed():
            await client.close()
            raise EndpointClosed("endpoint closed")
        if pipelined:
            self.pending[addr] = client
            self._wire(addr, client)  # the first call's answer may come before RelayRegistered
            self._tasks[addr] = self._loop.create_task(self._answered(addr, client))
            return
        self._attach(addr, client)
        self._tasks[addr] = self._loop.create_task(self._supervise(addr, client))

    async def _answered(self, addr: Address, client: RelayClient) -> None:
        """A pipelined registration: attach it once the relay answers, then keep it alive (or,
        refused or timed out, register again with back-off, as a failed bind would)."""
        try:
            await client.wait_registered()
        except (RelayError, OSError) as exc:
            log.warning("relay %s:%d did not register us: %s", *addr, exc)
            self._stats["relay_register_failed"] += 1
            self.pending.pop(addr, None)
            await self._supervise(addr, None)
            return
        self.pending.pop(addr, None)
        if self._is_closed():
            return
        self._attach(addr, client)
        await self._supervise(addr, client)

    async def use(
        self, entries: list[RelayEntry], host: str, stun: StunClient, on_network: NetworkHook
    ) -> list[Address]:
        """Resolve a relay list (``.relayspec``); relays with TLS/WebSocket transports get
        :class:`RelayLinks` (UDP-only lists run exactly as before). Returns the relays' keys,
        for :meth:`start`."""
        keyed = await resolve_entries(entries, host)
        if any(e.streams for e in keyed.values()):
            self.links = RelayLinks(
                keyed,
                self._identity,
                connect_udp=self.connect_udp,
                stun=stun,
                relay_timeout=self._config.relay_timeout,
                nat_keepalive=self._config.nat_keepalive,
                proxy=self._config.relay_proxy,
                current=self.clients.get,
                swap=self.swap,
                is_closed=self._is_closed,
                on_network=on_network,
            )
        return list(keyed)

    def udp_unanswered(self) -> bool:
        """Every relay that lists UDP carries us over TCP: UDP is blocked (``.relaylink``)."""
        return self.links is not None and self.links.udp_unanswered()

    def swap(self, addr: Address, client: RelayClient) -> None:
        """``client`` (another transport, ``.relaylink``, which then closes the old one)
        is our registration with ``addr`` now; the old one's supervisor follows it."""
        self._attach(addr, client)

    def _attach(self, addr: Address, client: RelayClient) -> None:
        previous = self._last_seen(addr[0])
        self.clients[addr] = client
        if self.links is not None:
            self.links.registered(addr, client)
        # (a stream's observed address is not a UDP mapping: nothing to compare)
        udp = client.transport == "udp"
        if udp and previous is not None and previous != client.observed_address:
            # Re-registered and seen from elsewhere: our NAT or network changed under us.
            self._on_network(f"re-registered with relay {addr[0]}:{addr[1]} from a new address")
        self._wire(addr, client)
        log.info(
            "registered with relay %s:%d as %s (seen as %s:%d)",
            *addr,
            self._identity.peer_id.short,
            *client.observed_address,
        )

    def _wire(self, addr: Address, client: RelayClient) -> None:
        """What ``client`` receives goes to the endpoint."""
        client.set_receiver(lambda src, payload: self._on_data(addr, src, payload))
        client.set_notice_handler(lambda code, peer: self._on_notice(addr, code, peer))
        client.set_network_handler(self._on_network)

    async def _supervise(self, addr: Address, client: RelayClient | None) -> None:
        """Keep a registration alive: when the relay connection is lost, register again."""
        delay = RELAY_RETRY_INITIAL
        while not self._is_closed():
            if client is not None:
                await client.wait_closed()
                moved = await self.links.moved(addr, client) if self.links else None
                if moved is not None:
                    client = moved  # swapped for another transport (swap): follow it
                    continue
                if self.clients.get(addr) is client:
                    del self.clients[addr]
                if self._is_closed():
                    return
                if client.close_code == RelayCloseCode.REPLACED:
                    # Another instance of this identity registered after us: last one wins.
                    # Taking it back would make the two fight forever, so stay off this relay.
                    log.warning(
                        "relay %s:%d: our registration was taken over by another instance of "
                        "this identity; not re-registering",
                        *addr,
                    )
                    self._stats["relay_replaced"] += 1
                    if self.on_replaced is not None:
                        self.on_replaced(addr)
                    return
                log.warning(
                    "lost relay %s:%d (%s); re-registering", *addr, client.close_reason or ""
                )
                self._stats["relay_lost"] += 1
                client = None
                delay = RELAY_RETRY_INITIAL
            await asyncio.sleep(delay)
            try:
                client = await self._connect(addr)
            except (RelayError, OSError) as exc:
                log.info("relay %s:%d still unavailable: %s", *addr, exc)
                delay = min(delay * 2, RELAY_RETRY_MAX)
                continue
            if self._is_closed():
                await client.close()
                return
            self._attach(addr, client)

    async def close(self) -> None:
        """Stop supervising, then leave every relay."""
        if self.links is not None:
            await self.links.close()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        clients = [*self.clients.values(), *self.pending.values()]
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
