"""Relay addresses that name their transports, and their resolution.

One relay, one entry: its transports separated by commas, optionally its identity::

    198.51.100.20:3478                                  UDP only (as before)
    198.51.100.20:3478,tls://relay.example:443          UDP, falling back to TLS
    relay.example:3478,tls://relay.example:443,wss://relay.example/relay,id=pt1...

``HOST:PORT`` is UDP; ``tls://HOST[:PORT]`` the raw TLS stream; ``wss://HOST[:PORT]/PATH``
WebSocket over TLS (port 443 by default for both). ``id=`` pins the relay's identity: its
TLS certificate and its QUIC control connection must carry that key; without it a stream
transport needs a CA-issued certificate for the host name. Host names are resolved when the
endpoint binds (``getaddrinfo``, both families); TLS checks the name it dialled.

An entry's ``key`` is the address the endpoint knows the relay by (relay paths, stats): its
UDP address, or for a stream-only relay its first stream target's resolved address. It does
not change when the relay path moves between transports.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from punchthrough.identity import InvalidPeerId, PeerId
from punchthrough.netio import Address
from punchthrough.relay.stream import StreamTarget, parse_stream_url

#: A fleet's relay map (``endpoint.relaymap.RelayMap``), opaque here.
M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class RelayEntry:
    """One relay of the relay list, parsed (``resolve_entry`` fills in the addresses)."""

    #: UDP ``(host, port)``: an IP literal once resolved (None: no UDP transport).
    udp: tuple[str, int] | None
    streams: tuple[StreamTarget, ...] = ()
    pin: PeerId | None = None
    #: The address the endpoint knows the relay by (set by :func:`resolve_entry`).
    key: Address | None = None

    @property
    def text(self) -> str:
        parts = [f"{_host(self.udp[0])}:{self.udp[1]}"] if self.udp else []
        parts += [t.url for t in self.streams]
        if self.pin is not None:
            parts.append(f"id={self.pin}")
        return ",".join(parts)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"relay {text!r} is not HOST:PORT")
    host = host.strip("[]")
    if not 0 < int(port_text) < 65536:
        raise ValueError(f"relay port {port_text} is not 1-65535")
    if not host:
        raise ValueError(f"relay {text!r} has no host")
    return host, int(port_text)


def parse_relay_entry(spec: str | Address | RelayEntry) -> RelayEntry:
    """Parse one relay-list entry (see the module docstring). Raises ``ValueError``."""
    if isinstance(spec, RelayEntry):
        return spec
    if isinstance(spec, tuple):
        host, port = spec
        return RelayEntry(udp=_host_port(f"{_host(str(host))}:{port}"))
    udp: tuple[str, int] | None = None
    streams: list[StreamTarget] = []
    pin: PeerId | None = None
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            continue
        if part.startswith("id="):
            try:
                pin = PeerId.parse(part[3:])
            except InvalidPeerId as exc:
                raise ValueError(f"relay id: {exc}") from None
        elif "://" in part:
            streams.append(parse_stream_url(part))
        elif udp is None:
            udp = _host_port(part)
        else:
            raise ValueError(f"relay {spec!r} names two UDP addresses (one relay per entry)")
    if udp is None and not streams:
        raise ValueError(f"relay {spec!r} names no transport")
    return RelayEntry(udp=udp, streams=tuple(streams), pin=pin)


def names_transports(spec: object) -> bool:
    """Whether ``spec`` is an entry in this module's syntax with more than a UDP address
    (``,`` or ``://``): never a fleet's ``ID=IP:PORT`` (``endpoint.relaymap``), though both
    may contain ``=``."""
    return isinstance(spec, str) and ("," in spec or "://" in spec)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve_host(host: str, port: int, *, family: int = socket.AF_INET) -> Address:
    """``host`` as an IP literal (itself if it is one). ``family``: that of the socket that will
    use it (our main UDP socket is IPv4 unless bound to an IPv6 address). Raises ``OSError``."""
    if is_ip(host):
        return (str(ipaddress.ip_address(host)), port)
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, family=family, type=socket.SOCK_DGRAM
    )
    if not infos:
        raise OSError(f"{host} has no address")
    sockaddr = infos[0][4]
    return (str(sockaddr[0]), int(sockaddr[1]))


async def resolve_entry(entry: RelayEntry, *, family: int = socket.AF_INET) -> RelayEntry:
    """``entry`` with its UDP host resolved and its ``key`` set. Stream hosts stay names
    (resolved at each connect, both families, and checked by TLS)."""
    udp = entry.udp
    if udp is not None:
        udp = await resolve_host(udp[0], udp[1], family=family)
        key: Address = udp
    else:
        first = entry.streams[0]
        key = await resolve_host(first.host, first.port, family=socket.AF_UNSPEC)
    return replace(entry, udp=udp, key=key)


def parse_lists(
    relays: Sequence[str | Address],
    stun: Sequence[str | Address],
    relay_map: M | None,
    fleet_map: Callable[[Sequence[str | Address]], M | None],
) -> tuple[M | None, list[RelayEntry], list[RelayEntry]]:
    """``Endpoint.bind``'s lists: a fleet's relay map (given, or ``fleet_map(relays)`` when
    the relays are ``ID=IP:PORT`` specs; an entry naming transports never is one), else the
    relay entries; and the STUN servers. Raises ``ValueError`` (before any await)."""
    named = any(map(names_transports, relays))
    relay_map = relay_map or (None if named else fleet_map(relays))
    return relay_map, ([] if relay_map else parse_relays(relays)), parse_stun(stun)


def parse_relays(specs: Sequence[str | Address | RelayEntry]) -> list[RelayEntry]:
    """A relay list (each entry as :func:`parse_relay_entry`)."""
    return [parse_relay_entry(s) for s in specs]


def parse_stun(specs: Sequence[str | Address]) -> list[RelayEntry]:
    """STUN servers: ``HOST:PORT`` each (UDP; names resolved by :func:`resolve_entries`)."""
    entries = [parse_relay_entry(s) for s in specs]
    if any(e.udp is None or e.streams or e.pin for e in entries):
        raise ValueError("a STUN server is HOST:PORT (UDP)")
    return entries


async def resolve_entries(entries: Sequence[RelayEntry], host: str) -> dict[Address, RelayEntry]:
    """Every entry resolved, by key, for a main socket bound to ``host`` (its family; both for
    the dual-stack ``::``)."""
    if host == "::":
        family = socket.AF_UNSPEC
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    resolved = [await resolve_entry(e, family=family) for e in entries]
    return {e.key: e for e in resolved if e.key is not None}
