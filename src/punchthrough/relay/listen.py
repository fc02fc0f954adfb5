"""The relay's listen sockets: the primary addresses, and in RFC 5780 mode the alternates.

With ``alt_ip`` every primary ``(ip, port)`` also gets ``(ip, port + 1)``, ``(alt_ip, port)``
and ``(alt_ip, port + 1)``, which answer STUN only (the RFC 5780 quadruple per port). A listen
address of the other family than ``alt_ip`` (a dual-stack relay) gets no alternates.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

from punchthrough.netio import Address, DatagramSocket, Network
from punchthrough.netio.batched import BatchedUdpSocket
from punchthrough.stun import StunServerCore

#: Bind attempts when a port 0 listen address needs port+1 free on both IPs (RFC 5780 mode).
MAX_BIND_ATTEMPTS: Final = 32
MAX_PORT: Final = 0xFFFF


def norm_ip(ip: str) -> str:
    """One spelling per IP (compressed), so that addresses compare equal as keys."""
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


def norm_address(addr: Address) -> Address:
    return (norm_ip(addr[0]), addr[1])


async def bind_listen(
    network: Network,
    listen: Sequence[Address],
    alt_ip: str | None,
    sockets: dict[Address, DatagramSocket],
    software: str | None,
    *,
    batched: bool = False,
) -> tuple[list[Address], StunServerCore]:
    """Bind the listen sockets (and the RFC 5780 alternates); fills ``sockets`` as it goes.
    ``batched``: the primaries are kernel sockets read in batches (the relay's fast path)."""

    async def bind_primary(host: str, port: int) -> DatagramSocket:
        if batched:
            return await BatchedUdpSocket.bind(host, port)
        return await network.bind(host, port)

    primaries: list[Address] = []
    if alt_ip is None:
        for host, port in listen:
            sock = await bind_primary(host, port)
            bound = norm_address(sock.local_address)
            sockets[bound] = sock
            primaries.append(bound)
        return primaries, StunServerCore(primaries, software=software)
    alt_ip = norm_ip(alt_ip)
    alt_ports: dict[int, int] = {}
    for primary_ip, port in listen:
        sock = await bind_primary(primary_ip, port)
        if (":" in primary_ip) != (":" in alt_ip):
            # dual stack: the other family's listen address serves relaying and plain STUN
            sockets[norm_address(sock.local_address)] = sock
            primaries.append(norm_address(sock.local_address))
            continue
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
