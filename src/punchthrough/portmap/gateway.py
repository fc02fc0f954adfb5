"""Finding the gateway in the real world, and judging the external address it reports.

The library never calls these by itself: the mapper takes ``gateway`` (and ``local_ip``)
explicitly, so tests and the simulator pass theirs and only the CLI looks at the real machine.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Final

#: Where Linux publishes the IPv4 routing table (see proc(5), "/proc/net/route").
PROC_NET_ROUTE: Final = Path("/proc/net/route")
#: /proc/net/route flags (linux/route.h): RTF_UP = route usable, RTF_GATEWAY = via a gateway.
RTF_UP: Final = 0x1
RTF_GATEWAY: Final = 0x2

#: External addresses that make a mapping useless to offer as a candidate: another NAT sits
#: beyond the gateway. RFC 1918 private space, RFC 6598 shared (CGNAT) space, and addresses no
#: peer could reach (this-network, loopback, link-local). The documentation ranges (RFC 5737)
#: are deliberately NOT here: our lab and simulator use them as "public" addresses.
NON_PUBLIC_NETWORKS: Final = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",  # RFC 1918
        "100.64.0.0/10",  # RFC 6598 carrier-grade NAT
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",  # RFC 1122 / RFC 3927
    )
)

#: RFC 4193 unique local IPv6 addresses: the IPv6 counterpart of RFC 1918.
ULA_NETWORK: Final = ipaddress.IPv6Network("fc00::/7")


def is_double_nat_address(ip: str) -> bool:
    """True when a gateway's external address is private or CGNAT: a NAT beyond it remains.

    An unparseable address also counts (it is useless as a candidate either way).
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is None:
            return (
                addr in ULA_NETWORK or addr.is_link_local or addr.is_unspecified or addr.is_loopback
            )
        addr = mapped
    return any(addr in net for net in NON_PUBLIC_NETWORKS)


def parse_proc_net_route(text: str) -> str | None:
    """The default IPv4 gateway from /proc/net/route's text, or None.

    Columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; addresses are 32-bit
    hex in host byte order (little-endian on every Linux we run on). The default route has
    destination and mask 0 and flags UP|GATEWAY; with several, the lowest metric wins.
    """
    best: tuple[int, str] | None = None
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            dest, gw, flags, metric, mask = (
                int(cols[1], 16),
                int(cols[2], 16),
                int(cols[3], 16),
                int(cols[6]),
                int(cols[7], 16),
            )
        except ValueError:
            continue
        if dest or mask or flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY or not gw:
            continue
        ip = str(ipaddress.IPv4Address(gw.to_bytes(4, "little")))
        if best is None or metric < best[0]:
            best = (metric, ip)
    return best[1] if best is not None else None


def default_gateway(route_file: Path = PROC_NET_ROUTE) -> str | None:
    """The default IPv4 gateway of this machine (Linux), or None when unknown."""
    try:
        return parse_proc_net_route(route_file.read_text())
    except OSError:
        return None


def local_ip_towards(gateway: str) -> str | None:
    """Our address on the gateway's network: a connected UDP socket's name (nothing is sent).

    PCP needs it (the request's client address must be the source the gateway sees, RFC 6887
    section 8.1); NAT-PMP and UPnP do not.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((gateway, 5351))
            return str(s.getsockname()[0])
    except OSError:
        return None
