"""Candidates and candidate pairs (RFC 8445 sections 5.1 and 6.1.2), sans-IO.

Every candidate we offer shares ONE base: the endpoint's main socket, the socket whose public
address the relays and STUN servers observed (so the mapping we advertise is the mapping that
punches and then carries QUIC). Kinds:

``host``    an interface address of this machine with the main socket's port
``mapped``  the external endpoint a port-mapping gateway (NAT-PMP / PCP / UPnP) granted
``srflx``   the address a relay or STUN server saw our main socket's packets come from
``prflx``   an address the peer's authenticated checks came from (learned, never offered)

A *pair* is (local base, remote address): with one base the local side of a pair is our socket,
whatever candidate the peer reached. Issue 6 adds bases (the birthday attack's extra sockets)
and remote addresses (predicted ports) as more pairs of the same engine.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from punchthrough.netio import Address
from punchthrough.signal import Candidate
from punchthrough.traversal.family import (
    BadAddress,
    Family,
    check_candidate_ip,
    usable_candidate_ip,
)

#: Type preferences (RFC 8445 section 5.1.2.2 recommends host 126, prflx 110, srflx 100, relay
#: 0). A port-mapped candidate is a server-reflexive one the NAT promised to keep open for
#: everyone: preferred over srflx, below host.
TYPE_PREFERENCE: Final[dict[str, int]] = {
    "host": 126,
    "prflx": 110,
    "mapped": 105,
    "srflx": 100,
    "relay": 0,
}
#: Local preference of our single base (RFC 8445 section 5.1.2.1: 65535 when there is one).
LOCAL_PREFERENCE: Final = 65535
#: We run one component (RFC 8445 section 5.1.2.1: component 1 = RTP, here the QUIC flow).
COMPONENT: Final = 1
#: Candidates kept per side (the signal message caps its list at the same number).
MAX_REMOTE_CANDIDATES: Final = 64


def candidate_priority(kind: str, local_preference: int = LOCAL_PREFERENCE) -> int:
    """RFC 8445 section 5.1.2.1: 2^24 type preference + 2^8 local preference + 256 - component."""
    return (TYPE_PREFERENCE[kind] << 24) + (local_preference << 8) + (256 - COMPONENT)


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 section 6.1.2.3: 2^32 MIN(G,D) + 2 MAX(G,D) + (G > D ? 1 : 0)."""
    g, d = controlling, controlled
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


def foundation(kind: str, base_ip: str, server: str = "") -> str:
    """RFC 8445 section 5.1.1.3: same type, base IP and server -> same foundation."""
    digest = hashlib.sha256(f"{kind}|{base_ip}|{server}".encode()).digest()
    return base64.b32encode(digest[:5]).decode().rstrip("=")


def _usable_ip(ip: str) -> bool:
    """IPv4 or IPv6 unicast we offer or check (:mod:`punchthrough.traversal.family`)."""
    return usable_candidate_ip(ip)


def make_candidates(
    port: int,
    *,
    host_ips: Iterable[str] = (),
    srflx: Iterable[tuple[Address, str]] = (),
    mapped: Address | None = None,
) -> list[Candidate]:
    """Our candidate list, best first, one per distinct address.

    ``srflx`` pairs each observed address with the server that observed it (the foundation).
    Loopback host addresses are offered only when nothing else is (two peers on one machine).
    IPv6 addresses are offered by the rules of :mod:`punchthrough.traversal.family` (no
    link-local, no zone id).
    """
    out: dict[Address, Candidate] = {}

    def add(kind: str, addr: Address, server: str = "") -> None:
        if not _usable_ip(addr[0]) or not 0 < addr[1] < 65536 or addr in out:
            return
        out[addr] = Candidate(
            kind=kind,  # type: ignore[arg-type]
            address=addr[0],
            port=addr[1],
            priority=candidate_priority(kind),
            foundation=foundation(kind, addr[0], server),
        )

    ips = [ip for ip in host_ips if _usable_ip(ip)]
    non_loopback = [ip for ip in ips if not ipaddress.ip_address(ip).is_loopback]
    for ip in non_loopback or ips:
        add("host", (ip, port))
    if mapped is not None:
        add("mapped", mapped)
    for addr, server in srflx:
        add("srflx", addr, server)
    ordered = sorted(out.values(), key=lambda c: -c.priority)
    return ordered[:MAX_REMOTE_CANDIDATES]


@dataclass(frozen=True, slots=True)
class RemoteCandidate:
    """A peer's candidate as the check engine uses it."""

    address: Address
    kind: str
    priority: int

    @classmethod
    def from_signal(cls, c: Candidate) -> RemoteCandidate:
        return cls((c.address, c.port), c.kind, c.priority)


def remote_candidates(
    cands: Sequence[Candidate],
    families: Collection[Family] | None = None,
    rejected: list[str] | None = None,
) -> list[RemoteCandidate]:
    """The peer's candidates we will check: usable, deduplicated (best kind kept), capped.

    Relay candidates are skipped: the relay path already exists and is not a direct path.
    ``families``: the families we have candidates in (pairs stay within a family); ``None``
    keeps both. A candidate refused as unusable (malformed, zone id, link-local, ...) is
    skipped with its reason appended to ``rejected``: the others are still checked.
    """
    best: dict[Address, RemoteCandidate] = {}
    for c in cands:
        if c.kind == "relay":
            continue
        try:
            fam = check_candidate_ip(c.address)
        except BadAddress as exc:
            if rejected is not None:
                rejected.append(str(exc))
            continue
        if families is not None and fam not in families:
            continue
        rc = RemoteCandidate.from_signal(c)
        old = best.get(rc.address)
        if old is None or rc.priority > old.priority:
            best[rc.address] = rc
    return sorted(best.values(), key=lambda r: -r.priority)[:MAX_REMOTE_CANDIDATES]


def describe(addr: Address) -> str:
    """``ip:port``, with an IPv6 address in brackets (RFC 3986)."""
    if ":" in addr[0]:
        return f"[{addr[0]}]:{addr[1]}"
    return f"{addr[0]}:{addr[1]}"
