"""A sans-IO IPv6 stateful firewall (RFC 6092), driven with explicit ``now``.

On IPv6 a home router does not translate: every host has a global address, and the router's
policy is a stateful filter (RFC 6092 section 3.2.2, REC-8: "packets originating from outside
... unless in response to traffic originated from inside" are dropped). What it keeps is a
flow per (internal endpoint, remote endpoint), as Linux conntrack does under the usual
``nft ... inet filter forward ct state established,related accept`` ruleset (the lab's), so an
inbound packet passes only if the internal endpoint sent to that remote first: the
address-and-port-dependent filtering of RFC 4787 terms, without any mapping. RFC 6092 REC-11
allows endpoint-independent or address-dependent filtering too: :class:`FirewallConfig` has
the same three filtering behaviours as the NAT model.

Two hosts behind two such firewalls reach each other by a plain simultaneous open: each side's
outbound check opens its own firewall for the other's address, the first ones die at the far
firewall, the retransmissions pass. No port prediction is needed: nothing is mapped.

NPTv6 (RFC 6296), a stateless prefix swap, is the router's job, not the firewall's:
:meth:`punchthrough.sim.Nat.enable_ipv6` with ``npt_inside``. It is endpoint-independent, so it
changes which address the peer must be given (the STUN-learned one), not which pairs can work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from punchthrough.netio import Address
from punchthrough.sim.nat_binding import Dropped, Permission
from punchthrough.sim.nat_config import (
    FILTERINGS,
    LINUX_UDP_REPLIED_TIMEOUT,
    LINUX_UDP_UNREPLIED_TIMEOUT,
    FilteringBehaviour,
)

#: Flows kept before expired ones are swept (bounded memory whatever the hosts do; Linux
#: ``nf_conntrack_max`` is far larger, but a simulated home has a handful of hosts).
SWEEP_AT: Final = 4096


@dataclass(frozen=True, slots=True)
class FirewallConfig:
    """An IPv6 stateful firewall's knobs (defaults: Linux conntrack, as the lab runs it).

    RFC 6092 REC-14 asks for at least 2 minutes of idle time on an established UDP flow; Linux
    gives 120 s once replied and 30 s before (``nf_conntrack_udp_timeout(_stream)``).
    """

    filtering: FilteringBehaviour = "apdf"
    binding_lifetime: float = LINUX_UDP_REPLIED_TIMEOUT
    unreplied_lifetime: float = LINUX_UDP_UNREPLIED_TIMEOUT
    #: Drop every UDP packet (a network that blocks UDP over IPv6 too).
    udp_blocked: bool = False

    def __post_init__(self) -> None:
        if self.filtering not in FILTERINGS:
            raise ValueError(f"filtering must be one of {FILTERINGS}")
        if self.binding_lifetime <= 0 or self.unreplied_lifetime <= 0:
            raise ValueError("lifetimes must be positive")


@dataclass(frozen=True, slots=True)
class Passed:
    """The firewall lets the packet through (no translation on IPv6)."""

    new: bool = False


class Firewall:
    """The flow table and filter of one IPv6 stateful firewall."""

    def __init__(self, config: FirewallConfig) -> None:
        self.config = config
        self._flows: dict[tuple[Address, Address], Permission] = {}
        self.stats: dict[str, int] = {}

    @property
    def flows(self) -> int:
        return len(self._flows)

    def outbound(self, now: float, internal: Address, remote: Address) -> Passed | Dropped:
        """A packet from inside: it passes and opens (or refreshes) the flow."""
        if self.config.udp_blocked:
            return self._drop("udp blocked")
        if len(self._flows) >= SWEEP_AT:
            self._sweep(now)
        key = (internal, remote)
        perm = self._flows.get(key)
        new = perm is None or perm.expires <= now
        if perm is None or new:
            perm = self._flows[key] = Permission(now)
        life = self.config.binding_lifetime if perm.replied else self.config.unreplied_lifetime
        perm.expires = max(perm.expires, now + life)
        self._count("out")
        return Passed(new)

    def inbound(self, now: float, remote: Address, internal: Address) -> Passed | Dropped:
        """A packet from outside to ``internal``: only an answer to an inside flow passes."""
        if self.config.udp_blocked:
            return self._drop("udp blocked")
        perm = self._flows.get((internal, remote))
        if perm is None or perm.expires <= now:
            perm = None
            if not self._admits_other(now, remote, internal):
                return self._drop(
                    f"firewall ({self.config.filtering}): {remote[0]}:{remote[1]} not contacted "
                    f"from {internal[0]}:{internal[1]}"
                )
        if perm is not None:
            perm.replied = True
            perm.expires = max(perm.expires, now + self.config.binding_lifetime)
        self._count("in")
        return Passed()

    def _admits_other(self, now: float, remote: Address, internal: Address) -> bool:
        f = self.config.filtering
        if f == "apdf":
            return False
        for (i, r), p in self._flows.items():
            if i == internal and p.expires > now and (f == "eif" or r[0] == remote[0]):
                return True
        return False

    def _sweep(self, now: float) -> None:
        for key in [k for k, p in self._flows.items() if p.expires <= now]:
            del self._flows[key]

    def _drop(self, reason: str) -> Dropped:
        self._count("drop")
        return Dropped(reason)

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1


#: The firewall profiles by name (``--ipv6`` and the lab use the same names).
FIREWALLS: Final[dict[str, FirewallConfig | None]] = {
    # No firewall at all: a public IPv6 host.
    "open": None,
    # nft inet filter: ct state established,related accept; the rest of forward dropped.
    "stateful": FirewallConfig("apdf"),
}
