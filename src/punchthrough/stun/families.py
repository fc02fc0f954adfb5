"""Dual-stack STUN servers: RFC 5780 runs on the family of the alternate IP, and listen
addresses of the other family answer plain STUN (no OTHER-ADDRESS)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Address = tuple[str, int]


def ip_version(ip: str) -> int:
    """4 or 6; 0 for a malformed address (the caller's own validation reports it)."""
    try:
        return ipaddress.ip_address(ip).version
    except ValueError:
        return 0


def split_by_family(listen: Sequence[Address], alt_ip: str) -> tuple[list[Address], list[Address]]:
    """(the listen addresses of ``alt_ip``'s family, those of the other family)."""
    version = ip_version(alt_ip)
    same = [a for a in listen if ip_version(a[0]) == version]
    return same, [a for a in listen if ip_version(a[0]) != version]
