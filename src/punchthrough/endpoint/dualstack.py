"""Dual stack at the endpoint: where the main socket binds, and which families it speaks.

The endpoint keeps ONE main socket (see :mod:`punchthrough.netio.udp` for why one dual-stack
``AF_INET6`` socket with ``IPV6_V6ONLY=0`` and not one socket per family). By default it binds
``::`` when the network has IPv6 (the simulator: a host with an IPv6 address; the kernel: a
global IPv6 address and a kernel that allows dual-stack sockets), else ``0.0.0.0``: an
IPv4-only host binds, gathers and checks exactly as before IPv6.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from punchthrough.nat.behavior import Sample
from punchthrough.netio import Network
from punchthrough.traversal.family import IPV4, IPV6, Family, ip_family

#: Where an IPv4-only endpoint binds (what ``Endpoint.bind`` always did before IPv6).
IPV4_ANY: Final = "0.0.0.0"
#: The dual-stack wildcard.
DUAL_STACK: Final = "::"


def bind_host(network: Network, host: str | None) -> str:
    """``host`` if given, else the network's default (``::`` with IPv6, else ``0.0.0.0``)."""
    if host:
        return host
    default = getattr(network, "default_bind_host", IPV4_ANY)
    return default if isinstance(default, str) else IPV4_ANY


def socket_families(local_ip: str) -> frozenset[Family]:
    """The families a socket bound to ``local_ip`` can send to."""
    if local_ip == DUAL_STACK:
        return frozenset({IPV4, IPV6})
    if local_ip in (IPV4_ANY, ""):
        return frozenset({IPV4})
    fam = ip_family(local_ip)
    return frozenset({fam}) if fam is not None else frozenset()


def usable_ips(ips: Iterable[str], local_ip: str) -> list[str]:
    """The interface addresses a socket bound to ``local_ip`` can use as host candidates."""
    families = socket_families(local_ip)
    return [ip for ip in ips if ip_family(ip) in families]


def nat_samples(samples: Sequence[Sample]) -> list[Sample]:
    """The samples that describe our NAT: the IPv4 ones when there are any (IPv6 is not
    translated: mixing its addresses in would look like an endpoint-dependent mapping), else
    the IPv6 ones (an IPv6-only host: no NAT, its firewall seen as an endpoint-independent
    mapping)."""
    v4 = [s for s in samples if ip_family(s.mapped[0]) == IPV4]
    return v4 if v4 else list(samples)
