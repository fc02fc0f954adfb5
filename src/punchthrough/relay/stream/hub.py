"""The relay's stream connections as one virtual datagram socket.

The relay serves everything through :class:`~punchthrough.netio.DatagramSocket` objects and a
first-byte demultiplexer each (``relay.server``). :class:`StreamHub` is one more such socket:
each TLS or WebSocket connection is a *virtual source address*; a datagram read from a
connection is delivered to the hub's receiver as if it came from that address, and
``sendto(data, address)`` writes to that connection. Registration, STUN, the QUIC control
plane, limits and forwarding (UDP <-> TCP included) are therefore the relay's unchanged code.

Virtual addresses: ``(0100:XXXX:XXXX:XXXX::1, tcp port)``, one /64 per connection inside
``0100::/8``, which IANA reserves (RFC 4291 section 2.4; ``100::/64``, RFC 6666's discard
prefix, is never given to a connection: the hubs' own socket keys ``(100::N, 0)`` live there,
as dict keys only). No UDP datagram can come from there, so a stream client never
shares a registry key with a UDP client (a real ``ip:port`` could: TCP and UDP ports are
separate spaces, and a shared key would make one registration displace the other). The
per-source limits of the control plane count /64s, so they never bind on streams; the hub's
listener applies its own caps by the connection's *real* address (:class:`StreamLimits`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from punchthrough.netio import Address, DatagramReceiver, SocketClosed, SocketState

log = logging.getLogger(__name__)

#: First hextet of every virtual address (0100::/8, reserved by the IETF; RFC 4291 2.4).
VIRTUAL_PREFIX: Final = 0x0100
#: Counter values per hub before they wrap (48 bits: hextets 2-4). Never reached in practice.
_VIRTUAL_SPACE: Final = 1 << 48

STREAM_STAT_KEYS: Final = (
    "stream_accepted",  # TCP connections taken (before TLS)
    "stream_refused_full",  # max_connections reached: closed at once, no TLS
    "stream_refused_per_ip",  # max_connections_per_ip (IPv4 /32, IPv6 /64) reached
    "stream_tls_failed",  # handshake failed (garbage, wrong version, no shared ALPN ...)
    "stream_tls_timeout",  # no finished handshake within handshake_timeout
    "stream_tls",  # connections that became raw TLS links
    "stream_websocket",  # connections upgraded to WebSocket
    "stream_ws_rejected",  # bad upgrade (path, subprotocol, not WebSocket): HTTP 4xx
    "stream_header_timeout",  # HTTP upgrade not complete within header_timeout (slowloris)
    "stream_header_too_large",  # more than max_header_bytes before the upgrade completed
    "stream_bad_frame",  # length 0 or > MAX_STREAM_DATAGRAM, text/fragmented WS message
    "stream_truncated",  # EOF inside a datagram
    "stream_idle_closed",  # nothing received for idle_timeout
    "stream_unregistered_closed",  # no registration within register_timeout
    "stream_datagrams_in",
    "stream_datagrams_out",
    "stream_dropped_backlog",  # the client reads too slowly: write buffer full, dropped
    "stream_dropped_no_conn",  # sendto a virtual address whose connection is gone
)


class StreamConn(Protocol):
    """What the hub needs of a live connection (:class:`.carrier.Carrier`)."""

    def send(self, datagram: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Limits of a relay's TCP port. Defaults are for one relay process on one core."""

    #: Open TCP connections in all. Each holds at most 32 KiB read (``listener.READ_LIMIT``), a
    #: partial datagram, 64 KiB of writes (``carrier.MAX_WRITE_BUFFER``) and a TLS session: about
    #: 150 KiB worst case, so ~600 MiB at this cap; lower it on a small machine.
    max_connections: int = 4096
    #: Per IPv4 address or IPv6 /64 (``relay.limits.address_prefix``): a CGNAT address hides
    #: many users, so generous, but one host cannot take the port.
    max_connections_per_ip: int = 64
    #: TCP accept to finished TLS handshake (a few RTTs, plus a proxy's CONNECT).
    handshake_timeout: float = 10.0
    #: TLS done to a complete WebSocket upgrade request (slowloris bound).
    header_timeout: float = 5.0
    #: Bytes of the upgrade request we buffer (a browser's is under 1 KiB, a proxy's under 4).
    max_header_bytes: int = 16 * 1024
    #: Nothing received for this long: closed (clients keep the link busy every 2-10 s).
    idle_timeout: float = 60.0
    #: A connection must carry a registration within this long, else it is closed.
    register_timeout: float = 15.0
    #: URL path of the WebSocket upgrade.
    ws_path: str = "/relay"

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_connections_per_ip, self.max_header_bytes) < 1:
            raise ValueError("stream limits must be at least 1")
        for name in ("handshake_timeout", "header_timeout", "idle_timeout", "register_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not self.ws_path.startswith("/"):
            raise ValueError("ws_path must start with '/'")


def virtual_address(n: int, port: int) -> Address:
    """The ``n``-th connection's virtual source address (its own /64 in 0100::/8)."""
    n %= _VIRTUAL_SPACE
    a, b, c = (n >> 32) & 0xFFFF, (n >> 16) & 0xFFFF, n & 0xFFFF
    return (f"{VIRTUAL_PREFIX:x}:{a:x}:{b:x}:{c:x}::1", port)


def is_virtual(address: Address) -> bool:
    """Whether ``address`` is a stream connection's virtual address."""
    return address[0].startswith(f"{VIRTUAL_PREFIX:x}:")


class StreamHub(SocketState):
    """A :class:`~punchthrough.netio.DatagramSocket` whose "peers" are stream connections."""

    def __init__(self, local: Address) -> None:
        self._local = local
        self._receiver: DatagramReceiver | None = None
        self._conns: dict[Address, StreamConn] = {}
        self._next = 1  # virtual_address(0) would be the discard prefix 100::/64
        self._closed = False
        self._send_errors = 0
        self.stats: Counter[str] = Counter(dict.fromkeys(STREAM_STAT_KEYS, 0))
        #: Called by :meth:`close` (the listener stops and drops every connection).
        self.on_close: Callable[[], None] | None = None

    # -- DatagramSocket --------------------------------------------------------------------
    def sendto(self, data: bytes, addr: Address) -> None:
        if self._closed:
            raise SocketClosed("stream listener is closed")
        conn = self._conns.get(addr)
        if conn is None:
            self.stats["stream_dropped_no_conn"] += 1
            return
        if conn.send(data):
            self.stats["stream_datagrams_out"] += 1
        else:
            self.stats["stream_dropped_backlog"] += 1
            self._send_errors += 1

    def set_receiver(self, receiver: DatagramReceiver | None) -> None:
        self._receiver = receiver

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.on_close is not None:
            self.on_close()
        self._conns.clear()

    # -- connections -------------------------------------------------------------------------
    def attach(self, conn: StreamConn, port: int) -> Address:
        """A connection became a link: its virtual address (the relay sees it as that)."""
        addr = virtual_address(self._next, port)
        self._next += 1
        while addr in self._conns:  # only after 2**48 connections
            addr = virtual_address(self._next, port)
            self._next += 1
        self._conns[addr] = conn
        return addr

    def detach(self, addr: Address) -> None:
        self._conns.pop(addr, None)

    def deliver(self, data: bytes, addr: Address) -> None:
        """A datagram read from the connection at ``addr``, into the relay's demultiplexer."""
        self.stats["stream_datagrams_in"] += 1
        receiver = self._receiver
        if receiver is None or self._closed:
            return
        try:
            receiver(data, addr)
        except Exception:  # the relay's own handlers count their errors; never kill a link
            log.exception("relay handler failed on a stream datagram from %s", addr[0])

    def __len__(self) -> int:
        return len(self._conns)
