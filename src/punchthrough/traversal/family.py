"""Address families in candidates, pairs and path choice (sans-IO).

Rules, and why:

- **Pairs stay within a family** (RFC 8445 section 6.1.2.2): an IPv4 base cannot send to an
  IPv6 address. The peer's candidates of a family we have no candidate in are skipped.
- **Which IPv6 addresses are candidates**: unicast, not link-local (``fe80::/10`` needs a zone
  id that means nothing on the peer's host, and two peers on one link reach each other on their
  global or IPv4 host addresses anyway), not IPv4-mapped, and never with a zone id. Documentation
  (``2001:db8::/32``) and ULA (``fc00::/7``) addresses count: the simulator and the lab use
  them, and a ULA reaches peers of the same site, as a private IPv4 host address does.
- **Happy eyeballs** (RFC 8305, and RFC 8421 for ICE): among pairs of equal priority the IPv6
  one is checked first; the first pair that answers, of either family, carries the call at once.
- **Path choice** (:func:`punchthrough.traversal.pathchoice.preferred_pair`, the controlling
  side's nomination): the best IPv6 pair wins unless the best IPv4 pair is more than 10% faster
  (RTT of each pair's check). Tailscale's
  ``betterAddr`` gives IPv6 the same kind of bonus: with no NAT on the path, an IPv6 flow has
  no mapping to expire or be rebound under the call, so among comparable RTTs it is the more
  robust path. Without both families succeeded, nothing changes: the best pair by priority.
"""

from __future__ import annotations

import ipaddress
from typing import Final, Literal

Family = Literal["ipv4", "ipv6"]
IPV4: Final[Family] = "ipv4"
IPV6: Final[Family] = "ipv6"


class BadAddress(ValueError):
    """A candidate address that is not a usable unicast address (typed, never a crash)."""


def ip_family(ip: str) -> Family | None:
    """``ipv4`` / ``ipv6`` for a well-formed address text, else ``None``."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return IPV4 if addr.version == 4 else IPV6


def check_candidate_ip(ip: str) -> Family:
    """The family of a peer's candidate address, or :class:`BadAddress` saying why not."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise BadAddress(f"not an IP address: {ip[:64]!r}") from None
    if addr.is_unspecified or addr.is_multicast:
        raise BadAddress(f"not a unicast address: {ip}")
    if addr.version == 4:
        return IPV4
    assert isinstance(addr, ipaddress.IPv6Address)
    if addr.scope_id is not None:
        raise BadAddress(f"zone ids mean nothing on another host: {ip[:64]}")
    if addr.ipv4_mapped is not None:
        raise BadAddress(f"IPv4-mapped addresses are offered as IPv4: {ip}")
    if addr.is_link_local:
        raise BadAddress(f"link-local addresses are not offered: {ip}")
    return IPV6


def usable_candidate_ip(ip: str) -> bool:
    try:
        check_candidate_ip(ip)
    except BadAddress:
        return False
    return True
