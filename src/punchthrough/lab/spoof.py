"""UDP datagrams with a forged IPv4 source address (root only): the attacker of issue 12.

A raw socket (``IPPROTO_RAW``, so the kernel takes our IP header as is, RFC 791) lets a process
send from any address, as an off-path attacker on a network without ingress filtering
(RFC 2827) can. Used by the attack tests and benchmarks, on loopback or inside a lab namespace
only: the sender refuses any destination outside loopback and the documentation ranges.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Final

from punchthrough.netio import Address

#: Where forged packets may go (the project's network safety rule): loopback, the lab's
#: documentation ranges and its private ranges.
ALLOWED_DESTINATIONS: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "10.0.0.0/8",
        "100.64.0.0/10",
    )
)
_IP_HEADER: Final = struct.Struct("!BBHHHBBH4s4s")
_UDP_HEADER: Final = struct.Struct("!HHHH")
#: IPv4, header of 5 32-bit words; TTL 64 (Linux's default); protocol 17 = UDP.
_VERSION_IHL: Final = 0x45
_TTL: Final = 64
_PROTO_UDP: Final = 17


def udp_packet(src: Address, dst: Address, payload: bytes) -> bytes:
    """An IPv4 + UDP packet. Checksums: the kernel fills the IP one for IPPROTO_RAW (raw(7));
    a UDP checksum of 0 means "none" over IPv4 (RFC 768)."""
    length = _UDP_HEADER.size + len(payload)
    udp = _UDP_HEADER.pack(src[1], dst[1], length, 0)
    ip = _IP_HEADER.pack(
        _VERSION_IHL,
        0,
        _IP_HEADER.size + length,
        0,
        0,
        _TTL,
        _PROTO_UDP,
        0,
        socket.inet_aton(src[0]),
        socket.inet_aton(dst[0]),
    )
    return ip + udp + payload


class SpoofingSender:
    """A raw socket that sends UDP from any source; closed by :meth:`close` or ``with``."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sent = 0

    def send(self, src: Address, dst: Address, payload: bytes) -> None:
        """Send ``payload`` to ``dst`` as if from ``src`` (``ValueError`` for a destination
        outside the allowed ranges)."""
        if not any(ipaddress.ip_address(dst[0]) in net for net in ALLOWED_DESTINATIONS):
            raise ValueError(f"{dst[0]} is outside loopback and the lab's ranges")
        self._sock.sendto(udp_packet(src, dst, payload), (dst[0], 0))
        self.sent += 1

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SpoofingSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
