"""What the virtual internet is made of: realms, hosts with sockets, and NAT boxes.

A *realm* is one addressing domain: the public internet, or the inside of a NAT. Every host and
every NAT's WAN side sits in exactly one realm; a NAT's LAN side owns an inner realm whose
unknown destinations route to the NAT (its default route), which is how NATs chain. Nodes hold
addresses, sockets and NAT tables; :class:`~punchthrough.sim.world.World` moves the packets.

Hosts implement :class:`~punchthrough.netio.Network` and their sockets
:class:`~punchthrough.netio.DatagramSocket`: endpoint code cannot tell it is simulated.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import random
from dataclasses import dataclass
from typing import Final, Protocol

from punchthrough.netio import (
    Address,
    DatagramReceiver,
    DatagramSocket,
    SocketState,
)
from punchthrough.sim.firewall import Firewall, FirewallConfig
from punchthrough.sim.link import Link
from punchthrough.sim.nat import NatTable
from punchthrough.sim.nat_config import NatConfig
from punchthrough.sim.trace import TraceEvent

#: The name sockets have always logged under (they lived in world.py), kept for log filters.
log = logging.getLogger("punchthrough.sim.world")

#: Linux ``net.ipv4.ip_local_port_range`` default: where port 0 binds land.
EPHEMERAL_PORTS: Final = (32768, 60999)
#: Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP); larger sends fail with EMSGSIZE.
MAX_UDP_PAYLOAD: Final = 65507
_WILDCARD: Final = "0.0.0.0"
#: The IPv6 wildcard: a socket bound there is dual-stack (Linux's ``IPV6_V6ONLY=0`` default),
#: it receives IPv4 and IPv6 and sends to both.
WILDCARD6: Final = "::"


def family(ip: str) -> int:
    """4 or 6 (the text form decides, as the kernel's ``inet_pton`` does)."""
    return 6 if ":" in ip else 4


def norm_ip(ip: str) -> str:
    """One spelling per address; an IPv4-mapped IPv6 address is the IPv4 address (as a
    dual-stack socket sends it). Raises ``ValueError`` on a malformed one or a zone id."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            raise ValueError(f"zone ids are not routable: {ip}")
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
    return str(addr)


class NodeWorld(Protocol):
    """What hosts and NAT boxes use of the world they are placed in.

    :class:`~punchthrough.sim.world.World` is the implementation; naming it by its members keeps
    this module below world.py (which builds nodes) instead of in an import cycle with it.
    """

    @property
    def seed(self) -> int: ...

    @property
    def tracing(self) -> bool: ...

    @property
    def now(self) -> float: ...

    def add_host(
        self, name: str, *addresses: str, realm: Realm | None = None, link: Link | None = None
    ) -> Host: ...

    def add_nat(
        self,
        name: str,
        config: NatConfig,
        external_ip: str,
        *,
        realm: Realm | None = None,
        inside_ip: str = "10.0.1.1",
        link: Link | None = None,
    ) -> Nat: ...

    def _send_from_host(self, host: Host, src: Address, dst: Address, data: bytes) -> None: ...

    def _trace(self, event: TraceEvent) -> None: ...


class Realm:
    """An addressing domain: the internet, or the inside of one NAT."""

    def __init__(self, name: str, gateway: Nat | None = None) -> None:
        self.name = name
        self.gateway = gateway
        self.nodes: dict[str, Host | NatWan | NatLan] = {}
        #: IPv6 prefixes routed to a home router's WAN side (its firewall), in this realm.
        self.routes: list[tuple[ipaddress.IPv6Network, Nat]] = []

    def _attach(self, ip: str, node: Host | NatWan | NatLan) -> None:
        if norm_ip(ip) != ip:  # ValueError on a malformed address
            raise ValueError(f"write {ip} as {norm_ip(ip)}")
        if ip in self.nodes:
            raise ValueError(f"address {ip} already in use in realm {self.name}")
        self.nodes[ip] = node

    def route6(self, ip: str) -> Nat | None:
        """The router an IPv6 address not attached here is routed to, if any."""
        if not self.routes:
            return None
        addr = ipaddress.IPv6Address(ip)
        for net, nat in self.routes:
            if addr in net:
                return nat
        return None

    def __repr__(self) -> str:
        return f"Realm({self.name!r})"


class SimSocket(SocketState):
    """A UDP socket on a simulated host; implements :class:`DatagramSocket`."""

    def __init__(self, host: Host, local: Address) -> None:
        self._host = host
        self._local = local
        self._receiver: DatagramReceiver | None = None
        self._closed = False
        self._send_errors = 0

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._closed:
            raise self._closed_error()
        payload = bytes(data)
        try:
            dst = (norm_ip(addr[0]), int(addr[1]))
            if not 0 < dst[1] <= 0xFFFF:
                raise ValueError("port")
        except (ValueError, TypeError, IndexError):
            self._send_errors += 1  # the kernel would refuse it (EINVAL / EAFNOSUPPORT)
            return
        if len(payload) > MAX_UDP_PAYLOAD:
            self._send_errors += 1  # EMSGSIZE
            return
        src_ip = self._source_ip(family(dst[0]))
        if src_ip is None:
            self._send_errors += 1  # EAFNOSUPPORT (IPv4 socket) / ENETUNREACH (no address)
            return
        self._host.world._send_from_host(self._host, (src_ip, self._local[1]), dst, payload)

    def _source_ip(self, fam: int) -> str | None:
        """The source address towards a destination of family ``fam``, or ``None``."""
        local = self._local[0]
        if local == _WILDCARD and fam != 4:
            return None
        if local in (_WILDCARD, WILDCARD6):
            return next((a for a in self._host.addresses if family(a) == fam), None)
        return local if family(local) == fam else None

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
        self, world: NodeWorld, name: str, addresses: tuple[str, ...], realm: Realm, link: Link
    ) -> None:
        self.world = world
        self.name = name
        self.addresses = addresses
        self.realm = realm
        self.link = link
        self._sockets: dict[Address, SimSocket] = {}
        self._rng = random.Random(f"{world.seed}/host/{name}")
        self._has_ipv6 = any(family(a) == 6 for a in addresses)

    @property
    def address(self) -> str:
        return self.addresses[0]

    async def bind(self, host: str = _WILDCARD, port: int = 0) -> DatagramSocket:
        """Bind like Linux without SO_REUSEADDR: wildcard and specific binds of a port clash."""
        ip = host or _WILDCARD
        if ip != _WILDCARD and ip != WILDCARD6:
            try:
                ip = norm_ip(ip)
            except ValueError:
                raise OSError(errno.EINVAL, f"bad address {host!r}") from None
        if ip not in (_WILDCARD, WILDCARD6) and ip not in self.addresses:
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
        if ip == _WILDCARD and any((a, port) in self._sockets for a in self.addresses):
            return True
        # A dual-stack wildcard holds the port on every address of both families.
        if (WILDCARD6, port) in self._sockets:
            return True
        return ip == WILDCARD6 and any((a, port) in self._sockets for a in self.addresses)

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
        sock = self._sockets.get(dst)
        if sock is None and family(dst[0]) == 4:
            sock = self._sockets.get((_WILDCARD, dst[1]))
        if sock is None:
            sock = self._sockets.get((WILDCARD6, dst[1]))
        return sock

    @property
    def has_ipv6(self) -> bool:
        """The host has an IPv6 address (an IPv4-only host behaves exactly as before IPv6)."""
        return self._has_ipv6

    @property
    def default_bind_host(self) -> str:
        """Where an endpoint binds by default: dual-stack ``::`` when the host has IPv6."""
        return WILDCARD6 if self._has_ipv6 else _WILDCARD

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
        world: NodeWorld,
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
        self._wan = NatWan(self)
        self._lan = NatLan(self)
        #: The IPv6 prefix routed to this box (its LAN's hosts have global addresses there)
        #: and the stateful firewall it applies to IPv6 (``None``: IPv6 passes unfiltered).
        self.ipv6_prefix: ipaddress.IPv6Network | None = None
        self.firewall: Firewall | None = None
        #: NPTv6: the LAN's own prefix, swapped for ``ipv6_prefix`` at the box (None: none).
        self.npt_inside: ipaddress.IPv6Network | None = None

    def enable_ipv6(
        self, prefix: str, firewall: FirewallConfig | None, *, npt_inside: str | None = None
    ) -> None:
        """Route ``prefix`` (e.g. ``2001:db8:1::/64``) of the outer realm to this box, which
        forwards IPv6 without translation through ``firewall`` (a dual-stack home router:
        NAT44 for IPv4, an RFC 6092 stateful firewall for IPv6).

        ``npt_inside`` (e.g. ``fd00:1::/64``): NPTv6 (RFC 6296), the LAN's hosts are numbered
        there and the box swaps that prefix for ``prefix`` both ways, statelessly (the
        interface identifier is kept; RFC 6296's checksum-neutral adjustment is not modelled:
        nothing here checksums)."""
        if npt_inside is not None:
            inside = ipaddress.IPv6Network(npt_inside)
            if inside.prefixlen != ipaddress.IPv6Network(prefix).prefixlen:
                raise ValueError("NPTv6 needs prefixes of the same length")
            self.npt_inside = inside
        if self.ipv6_prefix is not None:
            raise ValueError(f"{self.name} already routes {self.ipv6_prefix}")
        net = ipaddress.IPv6Network(prefix)
        for other, nat in self.outer.routes:
            if net.overlaps(other):
                raise ValueError(f"{net} overlaps {other} of {nat.name}")
        self.ipv6_prefix = net
        self.firewall = Firewall(firewall) if firewall is not None else None
        self.outer.routes.append((net, self))

    def npt(self, ip: str, *, outbound: bool) -> str:
        """NPTv6 of one address (unchanged without NPTv6 or outside the prefix)."""
        if self.npt_inside is None or self.ipv6_prefix is None:
            return ip
        frm, to = (
            (self.npt_inside, self.ipv6_prefix) if outbound else (self.ipv6_prefix, self.npt_inside)
        )
        addr = ipaddress.IPv6Address(ip)
        if addr not in frm:
            return ip
        host_bits = int(addr) & int(frm.hostmask)
        return str(ipaddress.IPv6Address(int(to.network_address) | host_bits))

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
        if self.firewall is not None:
            gone += self.firewall.flows
            self.firewall = Firewall(self.firewall.config)
        self._observe(now, "flush", f"{gone} bindings dropped")
        return gone

    def _observe(self, at: float, kind: str, detail: str) -> None:
        if self.world.tracing:
            self.world._trace(TraceEvent(at, kind, self.name, None, None, 0, detail))

    def __repr__(self) -> str:
        return f"Nat({self.name!r}, {self.external_ip})"


@dataclass(frozen=True, slots=True)
class NatWan:
    """A NAT's address in its outer realm: packets routed here meet the table's inbound side."""

    nat: Nat


@dataclass(frozen=True, slots=True)
class NatLan:
    """A NAT's gateway address on its own LAN: only the port-mapping service listens there."""

    nat: Nat
