"""The virtual internet: realms of addresses, hosts with sockets, links, and NAT boxes.

A *realm* is one addressing domain: the public internet, or the inside of a NAT. Every host and
every NAT's WAN side sits in exactly one realm; a NAT's LAN side owns an inner realm whose
unknown destinations route to the NAT (its default route), which is how NATs chain. Packets move
hop by hop on the running event loop's clock (virtual under :func:`punchthrough.sim.run`), with
per-link latency, jitter and loss drawn from one seeded generator in send order, so a run is
reproducible bit for bit.

Hosts implement :class:`~punchthrough.netio.Network` and their sockets
:class:`~punchthrough.netio.DatagramSocket`: endpoint code cannot tell it is simulated.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import ipaddress
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from punchthrough.netio import Address, DatagramReceiver, DatagramSocket, SocketClosed
from punchthrough.portmap.natpmp_wire import NATPMP_PORT
from punchthrough.sim.clock import VirtualTimeLoop
from punchthrough.sim.nat import Admitted, NatConfig, NatTable, Translated
from punchthrough.sim.portmap_responder import respond

log = logging.getLogger(__name__)

#: Linux ``net.ipv4.ip_local_port_range`` default: where port 0 binds land.
EPHEMERAL_PORTS: Final = (32768, 60999)
#: Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP); larger sends fail with EMSGSIZE.
MAX_UDP_PAYLOAD: Final = 65507
_WILDCARD: Final = "0.0.0.0"
#: Same slack as asyncio's clock resolution check in ``BaseEventLoop._run_once``.
_EPSILON: Final = 1e-9


@dataclass(frozen=True, slots=True)
class Link:
    """A host's (or NAT's WAN) access link: one-way latency, uniform jitter, loss probability."""

    latency: float = 0.005
    jitter: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0 or not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"bad link parameters {self}")


NO_DELAY: Final = Link(0.0)


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One line of the packet trace."""

    time: float
    kind: str  # send, deliver, drop, nat-out, nat-in, hairpin, portmap, map, expire, churn, ...
    node: str
    src: Address | None
    dst: Address | None
    size: int
    detail: str = ""

    def __str__(self) -> str:
        path = ""
        if self.src is not None and self.dst is not None:
            path = f"{self.src[0]}:{self.src[1]} -> {self.dst[0]}:{self.dst[1]} {self.size}B"
        text = f"{self.time:11.6f} {self.kind:<8} {self.node:<10} {path}"
        return f"{text}  {self.detail}".rstrip() if self.detail else text.rstrip()


class Realm:
    """An addressing domain: the internet, or the inside of one NAT."""

    def __init__(self, name: str, gateway: Nat | None = None) -> None:
        self.name = name
        self.gateway = gateway
        self.nodes: dict[str, Host | _NatWan | _NatLan] = {}

    def _attach(self, ip: str, node: Host | _NatWan | _NatLan) -> None:
        ipaddress.IPv4Address(ip)  # ValueError on a malformed address
        if ip in self.nodes:
            raise ValueError(f"address {ip} already in use in realm {self.name}")
        self.nodes[ip] = node

    def __repr__(self) -> str:
        return f"Realm({self.name!r})"


class SimSocket:
    """A UDP socket on a simulated host; implements :class:`DatagramSocket`."""

    def __init__(self, host: Host, local: Address) -> None:
        self._host = host
        self._local = local
        self._receiver: DatagramReceiver | None = None
        self._closed = False
        self._send_errors = 0

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def send_errors(self) -> int:
        return self._send_errors

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._closed:
            raise SocketClosed(f"socket {self._local[0]}:{self._local[1]} is closed")
        payload = bytes(data)
        try:
            dst = (str(ipaddress.IPv4Address(addr[0])), int(addr[1]))
            if not 0 < dst[1] <= 0xFFFF:
                raise ValueError("port")
        except (ValueError, TypeError, IndexError):
            self._send_errors += 1  # the kernel would refuse it (EINVAL / EAFNOSUPPORT)
            return
        if len(payload) > MAX_UDP_PAYLOAD:
            self._send_errors += 1  # EMSGSIZE
            return
        src_ip = self._local[0] if self._local[0] != _WILDCARD else self._host.addresses[0]
        self._host.world._send_from_host(self._host, (src_ip, self._local[1]), dst, payload)

    def set_receiver(self, receiver: DatagramReceiver | None) -> None:
        self._receiver = receiver

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._host._unbind(self)

    def _deliver(self, data: bytes, src: Address) -> bool:
        receiver = self._receiver
        if receiver is None:
            return False
        try:
            receiver(data, src)
        except Exception:  # as UdpSocket: a buggy consumer must not stop the network
            log.exception("datagram receiver failed on %d bytes from %s:%d", len(data), *src)
        return True

    def __repr__(self) -> str:
        return f"SimSocket({self._host.name} {self._local[0]}:{self._local[1]})"


class Host:
    """A simulated machine with one or more addresses in one realm; a :class:`Network`."""

    def __init__(
        self, world: World, name: str, addresses: tuple[str, ...], realm: Realm, link: Link
    ) -> None:
        self.world = world
        self.name = name
        self.addresses = addresses
        self.realm = realm
        self.link = link
        self._sockets: dict[Address, SimSocket] = {}
        self._rng = random.Random(f"{world.seed}/host/{name}")

    @property
    def address(self) -> str:
        return self.addresses[0]

    async def bind(self, host: str = _WILDCARD, port: int = 0) -> DatagramSocket:
        """Bind like Linux without SO_REUSEADDR: wildcard and specific binds of a port clash."""
        ip = host or _WILDCARD
        if ":" in ip:
            raise OSError(errno.EAFNOSUPPORT, "the simulator is IPv4 only")
        if ip != _WILDCARD and ip not in self.addresses:
            raise OSError(errno.EADDRNOTAVAIL, f"{ip} is not an address of {self.name}")
        if not 0 <= port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {port} out of range")
        if port == 0:
            port = self._ephemeral(ip)
        elif self._in_use(ip, port):
            raise OSError(errno.EADDRINUSE, f"{ip}:{port} already in use on {self.name}")
        sock = SimSocket(self, (ip, port))
        self._sockets[(ip, port)] = sock
        return sock

    def _in_use(self, ip: str, port: int) -> bool:
        if (ip, port) in self._sockets or (_WILDCARD, port) in self._sockets:
            return True
        return ip == _WILDCARD and any((a, port) in self._sockets for a in self.addresses)

    def _ephemeral(self, ip: str) -> int:
        lo, hi = EPHEMERAL_PORTS
        for _ in range(64):
            port = self._rng.randint(lo, hi)
            if not self._in_use(ip, port):
                return port
        for port in range(lo, hi + 1):
            if not self._in_use(ip, port):
                return port
        raise OSError(errno.EADDRINUSE, "no free ephemeral port")

    def _unbind(self, sock: SimSocket) -> None:
        if self._sockets.get(sock.local_address) is sock:
            del self._sockets[sock.local_address]

    def _socket_for(self, dst: Address) -> SimSocket | None:
        return self._sockets.get(dst) or self._sockets.get((_WILDCARD, dst[1]))

    @property
    def sockets(self) -> list[SimSocket]:
        return list(self._sockets.values())

    def interface_addresses(self) -> list[str]:
        """This host's addresses (what a host-candidate gatherer lists, as on a real host)."""
        return list(self.addresses)

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {', '.join(self.addresses)})"


class Nat:
    """A NAT box: WAN address in an outer realm, a gateway address in its own inner realm."""

    def __init__(
        self,
        world: World,
        name: str,
        config: NatConfig,
        external_ip: str,
        outer: Realm,
        inside_ip: str,
        link: Link,
    ) -> None:
        self.world = world
        self.name = name
        self.config = config
        self.external_ip = external_ip
        self.outer = outer
        self.inside_ip = inside_ip
        self.link = link
        self.inside = Realm(f"{name}-lan", gateway=self)
        self.table = NatTable(
            config,
            external_ip,
            random.Random(f"{world.seed}/nat/{name}"),
            now=world.now,
            name=name,
            observer=self._observe,
        )
        self._wan = _NatWan(self)
        self._lan = _NatLan(self)

    def add_host(self, name: str, *addresses: str, link: Link | None = None) -> Host:
        """A host on this NAT's LAN."""
        return self.world.add_host(name, *addresses, realm=self.inside, link=link)

    def add_nat(
        self,
        name: str,
        config: NatConfig,
        external_ip: str,
        *,
        inside_ip: str = "10.0.1.1",
        link: Link | None = None,
    ) -> Nat:
        """A NAT whose WAN side is on this NAT's LAN (a home router behind a CGNAT)."""
        return self.world.add_nat(
            name, config, external_ip, realm=self.inside, inside_ip=inside_ip, link=link
        )

    def flush(self) -> int:
        """Forget every binding at once, as a router reboot or ``conntrack -F`` does.

        Returns how many bindings were dropped. Port mappings go too (a rebooted gateway's
        epoch restarts; clients re-map).
        """
        now = self.world.now
        gone = len(self.table.bindings)
        self.table = NatTable(
            self.config,
            self.external_ip,
            random.Random(f"{self.world.seed}/nat/{self.name}/flush/{now}"),
            now=now,
            name=self.name,
            observer=self._observe,
        )
        self._observe(now, "flush", f"{gone} bindings dropped")
        return gone

    def _observe(self, at: float, kind: str, detail: str) -> None:
        if self.world.tracing:
            self.world._trace(TraceEvent(at, kind, self.name, None, None, 0, detail))

    def __repr__(self) -> str:
        return f"Nat({self.name!r}, {self.external_ip})"


@dataclass(frozen=True, slots=True)
class _NatWan:
    nat: Nat


@dataclass(frozen=True, slots=True)
class _NatLan:
    nat: Nat


_Event = tuple[float, int, Callable[..., None], tuple[Any, ...]]


class World:
    """The simulated internet. Create it inside :func:`punchthrough.sim.run` (any running loop
    works; on a real loop it simply runs in real time)."""

    def __init__(
        self,
        seed: int | None = None,
        *,
        trace: bool = False,
        default_link: Link | None = None,
        trace_limit: int | None = 1_000_000,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        if seed is None:
            seed = self.loop.seed if isinstance(self.loop, VirtualTimeLoop) else 0
        self.seed = seed
        self.rng = random.Random(f"{seed}/links")
        self.tracing = trace
        self.trace: list[TraceEvent] = []
        self.trace_limit = trace_limit
        self.default_link = default_link if default_link is not None else Link()
        self.public = Realm("internet")
        self.hosts: dict[str, Host] = {}
        self.nats: dict[str, Nat] = {}
        self.stats: dict[str, int] = {"sent": 0, "delivered": 0, "dropped": 0}
        self.drop_reasons: dict[str, int] = {}
        self._events: list[_Event] = []
        self._seq = 0
        #: Drop rules (fault injection): ``rule(src, dst) -> True`` drops a packet on the public
        #: internet (addresses as seen there, i.e. after NAT translation).
        self.drop_rules: list[Callable[[Address, Address], bool]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = float("inf")

    @property
    def now(self) -> float:
        return self.loop.time()

    # -- building -----------------------------------------------------------------------------

    def add_host(
        self, name: str, *addresses: str, realm: Realm | None = None, link: Link | None = None
    ) -> Host:
        if not addresses:
            raise ValueError("a host needs at least one address")
        if name in self.hosts or name in self.nats:
            raise ValueError(f"name {name!r} already used")
        realm = realm if realm is not None else self.public
        host = Host(
            self, name, tuple(addresses), realm, link if link is not None else self.default_link
        )
        for ip in addresses:
            realm._attach(ip, host)
        self.hosts[name] = host
        return host

    def add_nat(
        self,
        name: str,
        config: NatConfig,
        external_ip: str,
        *,
        realm: Realm | None = None,
        inside_ip: str = "10.0.1.1",
        link: Link | None = None,
    ) -> Nat:
        if name in self.hosts or name in self.nats:
            raise ValueError(f"name {name!r} already used")
        realm = realm if realm is not None else self.public
        nat = Nat(
            self,
            name,
            config,
            external_ip,
            realm,
            inside_ip,
            link if link is not None else self.default_link,
        )
        realm._attach(external_ip, nat._wan)
        nat.inside._attach(inside_ip, nat._lan)
        self.nats[name] = nat
        return nat

    # -- tracing ------------------------------------------------------------------------------

    def _trace(self, event: TraceEvent) -> None:
        if self.trace_limit is None or len(self.trace) < self.trace_limit:
            self.trace.append(event)

    def format_trace(self) -> str:
        """The trace as text, in time order (NAT churn is computed lazily, so events recorded
        for the past are sorted into place; the sort is stable for equal times)."""
        return "\n".join(str(e) for e in sorted(self.trace, key=lambda e: e.time))

    def _drop(self, node: str, src: Address, dst: Address, size: int, reason: str) -> None:
        self.stats["dropped"] += 1
        key = reason.split(":", 1)[0]
        self.drop_reasons[key] = self.drop_reasons.get(key, 0) + 1
        if self.tracing:
            self._trace(TraceEvent(self.now, "drop", node, src, dst, size, reason))

    # -- event queue: FIFO among equal times, one asyncio timer at a time ----------------------

    def _schedule(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, fn, args))
        if when < self._timer_when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_when = when
            self._timer = self.loop.call_at(when, self._run_events)

    def _run_events(self) -> None:
        self._timer = None
        self._timer_when = float("inf")
        events = self._events
        now = self.loop.time() + _EPSILON  # the loop fires timers up to its clock resolution
        while events and events[0][0] <= now:
            _, _, fn, args = heapq.heappop(events)
            fn(*args)
        # Callbacks above may have armed a timer for a later event than the current head.
        if events and (self._timer is None or events[0][0] < self._timer_when):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_when = events[0][0]
            self._timer = self.loop.call_at(self._timer_when, self._run_events)

    # -- packet movement ----------------------------------------------------------------------

    def _delay(self, link: Link) -> float | None:
        """One traversal of ``link``: its delay, or ``None`` if the packet is lost."""
        if link.loss and self.rng.random() < link.loss:
            return None
        if link.jitter:
            return link.latency + self.rng.uniform(0.0, link.jitter)
        return link.latency

    def _send_from_host(self, host: Host, src: Address, dst: Address, data: bytes) -> None:
        self.stats["sent"] += 1
        if self.tracing:
            self._trace(TraceEvent(self.now, "send", host.name, src, dst, len(data)))
        if dst[0] in host.addresses:  # to itself: loopback, no link
            self._schedule(self.now, self._arrive_host, host, src, dst, data)
            return
        self._route(host.realm, host.link, host.name, src, dst, data)

    def add_drop_rule(self, rule: Callable[[Address, Address], bool]) -> Callable[[], None]:
        """Drop every public-internet packet for which ``rule(src, dst)`` is true (a cut link,
        an ``nft drop`` rule); returns a function that removes the rule again (the cut heals)."""
        self.drop_rules.append(rule)

        def heal() -> None:
            if rule in self.drop_rules:
                self.drop_rules.remove(rule)

        return heal

    def _route(
        self, realm: Realm, link: Link, node: str, src: Address, dst: Address, data: bytes
    ) -> None:
        """Move a packet from a node in ``realm`` (attached by ``link``) one hop on."""
        if realm is self.public and self.drop_rules and any(r(src, dst) for r in self.drop_rules):
            self._drop(node, src, dst, len(data), "drop rule")
            return
        target = realm.nodes.get(dst[0])
        if target is None and realm.gateway is None:
            self._drop(node, src, dst, len(data), f"no route to {dst[0]} in {realm.name}")
            return
        delay = self._delay(link)
        if delay is None:
            self._drop(node, src, dst, len(data), f"loss on link of {node}")
            return
        if target is None:
            assert realm.gateway is not None
            self._schedule(self.now + delay, self._arrive_nat_lan, realm.gateway, src, dst, data)
            return
        if isinstance(target, _NatLan):
            self._schedule(self.now + delay, self._arrive_gateway, target.nat, src, dst, data)
            return
        far = self._delay(target.nat.link if isinstance(target, _NatWan) else target.link)
        if far is None:
            name = target.nat.name if isinstance(target, _NatWan) else target.name
            self._drop(node, src, dst, len(data), f"loss on link of {name}")
            return
        when = self.now + delay + far
        if isinstance(target, _NatWan):
            self._schedule(when, self._arrive_nat_wan, target.nat, src, dst, data)
        else:
            self._schedule(when, self._arrive_host, target, src, dst, data)

    def _arrive_host(self, host: Host, src: Address, dst: Address, data: bytes) -> None:
        sock = host._socket_for(dst)
        if sock is None:
            self._drop(host.name, src, dst, len(data), f"port unreachable: {dst[1]}")
            return
        if self.tracing:
            self._trace(TraceEvent(self.now, "deliver", host.name, src, dst, len(data)))
        if sock._deliver(data, src):
            self.stats["delivered"] += 1
        else:
            self._drop(host.name, src, dst, len(data), "socket has no receiver")

    def _arrive_nat_lan(self, nat: Nat, src: Address, dst: Address, data: bytes) -> None:
        """A packet from the NAT's LAN to somewhere outside it."""
        result = nat.table.outbound(self.now, src, dst)
        if not isinstance(result, Translated):
            self._drop(nat.name, src, dst, len(data), result.reason)
            return
        out = result.external
        if self.tracing:
            new = " (new mapping)" if result.new else ""
            self._trace(
                TraceEvent(
                    self.now,
                    "nat-out",
                    nat.name,
                    src,
                    dst,
                    len(data),
                    f"=> src {out[0]}:{out[1]}{new}",
                )
            )
        if dst[0] == nat.external_ip:
            if not nat.config.hairpinning:
                self._drop(nat.name, out, dst, len(data), "hairpinning disabled")
                return
            if self.tracing:
                self._trace(TraceEvent(self.now, "hairpin", nat.name, out, dst, len(data)))
            self._inbound(nat, out, dst, data)
            return
        self._route(nat.outer, nat.link, nat.name, out, dst, data)

    def _arrive_nat_wan(self, nat: Nat, src: Address, dst: Address, data: bytes) -> None:
        self._inbound(nat, src, dst, data)

    def _inbound(self, nat: Nat, src: Address, dst: Address, data: bytes) -> None:
        result = nat.table.inbound(self.now, src, dst[1])
        if not isinstance(result, Admitted):
            self._drop(nat.name, src, dst, len(data), result.reason)
            return
        inner = result.internal
        if self.tracing:
            self._trace(
                TraceEvent(
                    self.now,
                    "nat-in",
                    nat.name,
                    src,
                    dst,
                    len(data),
                    f"=> dst {inner[0]}:{inner[1]}",
                )
            )
        self._route(nat.inside, NO_DELAY, nat.name, src, inner, data)

    def _arrive_gateway(self, nat: Nat, src: Address, dst: Address, data: bytes) -> None:
        """A packet for the NAT's own LAN address: only the port-mapping service listens."""
        cfg = nat.config
        if dst[1] != NATPMP_PORT or not (cfg.natpmp or cfg.pcp):
            self._drop(nat.name, src, dst, len(data), f"port unreachable: gateway {dst[1]}")
            return
        if self.tracing:
            self._trace(TraceEvent(self.now, "portmap", nat.name, src, dst, len(data), "request"))
        reply = respond(nat.table, self.now, src, data)
        if reply is None:
            self._drop(nat.name, src, dst, len(data), "malformed port-mapping request")
            return
        self._route(nat.inside, NO_DELAY, nat.name, dst, src, reply)
