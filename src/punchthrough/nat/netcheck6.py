"""netcheck over IPv6: reachable? which public address? translated? how does it filter?

On IPv6 a home router normally translates nothing (every host has a global address) and filters
statefully (RFC 6092): the mapping a STUN server reports is our own address and port, and the
filtering is whatever the firewall does with answers from endpoints we did not send to. This
runs alongside the IPv4 netcheck, against the IPv6 STUN servers given, from its own socket:

1. Binding to every IPv6 server: reachable, the public address, the mapping across servers
   (RFC 5780 section 4.3 when a server gives OTHER-ADDRESS), and ``translated``: whether the
   public address is one of ours (false = NPTv6 or NAT66 in the way).
2. With an RFC 5780 server over IPv6: the filtering tests from a fresh socket (section 4.4):
   a stateful firewall shows up as address-and-port-dependent filtering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from punchthrough.nat.behavior import Behavior, Sample, filtering_behavior
from punchthrough.nat.classify import Purpose, classify_mapping
from punchthrough.nat.filtering import filter_wait, filtering_probes
from punchthrough.nat.probe import PROBE_RTO, sample_mappings
from punchthrough.netio import Address, DatagramSocket, Network
from punchthrough.stun import BindingResult, StunClient, StunError

#: A dual-stack wildcard (the endpoint's own choice of socket): it speaks IPv6 too.
BIND_IPV6: Final = "::"


def is_ipv6(addr: Address) -> bool:
    return ":" in addr[0]


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}"


@dataclass
class Ipv6Report:
    """The IPv6 part of a netcheck report (``to_json`` is its stable form)."""

    reachable: bool = False
    public_ip: str | None = None
    mapped_endpoints: list[str] = field(default_factory=list)
    #: False when the public address is one of this host's (no NAT66/NPTv6); None: unknown.
    translated: bool | None = None
    mapping: Behavior = Behavior.UNKNOWN
    filtering: Behavior = Behavior.UNKNOWN
    rfc5780_server: str | None = None
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "reachable": self.reachable,
            "public_ip": self.public_ip,
            "mapped_endpoints": list(self.mapped_endpoints),
            "translated": self.translated,
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "rfc5780_server": self.rfc5780_server,
            "errors": list(self.errors),
        }


def translated(network: Network, public_ip: str | None) -> bool | None:
    """Whether ``public_ip`` is NOT one of the host's own addresses (NAT66 or NPTv6 in the
    way); ``None`` when the network cannot list its addresses or nothing was seen."""
    lister = getattr(network, "interface_addresses", None)
    if public_ip is None or not callable(lister):
        return None
    try:
        ours = {str(ip) for ip in lister()}
    except OSError:
        return None
    return public_ip not in ours


async def _binding(client: StunClient, dest: Address, timeout: float) -> BindingResult | None:
    try:
        return await client.binding(dest, timeout=timeout)
    except StunError:
        return None


async def run_netcheck6(
    network: Network, servers: Sequence[Address], *, timeout: float = 3.0, rto: float = PROBE_RTO
) -> Ipv6Report:
    """Probe IPv6 through ``servers`` (IPv6 addresses); never raises on a network outcome."""
    report = Ipv6Report()
    sockets: list[DatagramSocket] = []
    clients: list[StunClient] = []
    try:
        try:
            sock = await network.bind(BIND_IPV6, 0)
        except OSError as exc:
            report.errors.append(f"no IPv6 socket: {exc}")
            return report
        sockets.append(sock)
        main = StunClient(sock, rto=rto)
        main.attach()
        clients.append(main)
        unique = list(dict.fromkeys(servers))
        results = await asyncio.gather(*(_binding(main, s, timeout) for s in unique))
        answered = [(s, r) for s, r in zip(unique, results, strict=True) if r is not None]
        if not answered:
            report.errors.append("no IPv6 STUN server answered: no IPv6 route, or blocked")
            return report
        report.reachable = True
        rfc5780 = next(((s, r) for s, r in answered if r.other_address is not None), None)
        samples = [Sample(s, r.mapped) for s, r in answered]
        if rfc5780 is not None:
            (a_ip, p), res = rfc5780
            assert res.other_address is not None
            b_ip, p_alt = res.other_address
            report.rfc5780_server = _fmt(rfc5780[0])
            seen = {s for s, _ in answered}
            extra = [d for d in ((b_ip, p), (b_ip, p_alt), (a_ip, p_alt)) if d not in seen]
            samples += await sample_mappings(main, extra, timeout)
        report.mapped_endpoints = [_fmt(s.mapped) for s in samples]
        report.public_ip = samples[0].mapped[0]
        report.mapping = classify_mapping(samples, Purpose.REPORT)
        report.translated = translated(network, report.public_ip)
        if rfc5780 is None:
            report.errors.append("no IPv6 server sent OTHER-ADDRESS: IPv6 filtering is unknown")
            return report
        filt_sock = await network.bind(BIND_IPV6, 0)
        sockets.append(filt_sock)
        filt = StunClient(filt_sock, rto=rto)
        filt.attach()
        clients.append(filt)
        wait = filter_wait([r.rtt for _, r in answered], timeout)
        both, port_only = await asyncio.gather(*filtering_probes(filt, rfc5780[0], wait))
        report.filtering = filtering_behavior(both, port_only)
        return report
    except OSError as exc:
        report.errors.append(f"IPv6 probe failed: {exc}")
        return report
    finally:
        for c in clients:
            c.close()
        for s in sockets:
            s.close()
